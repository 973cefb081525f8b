"""The scores format, a SCUT-FBP5500 analogue: `Images/*.jpg`, each one filled square on white, and `labels.txt`
(`name score` lines) where the score is fixed by the square's side plus a little noise.

The side spans 20%..90% of the image and maps linearly onto 1..5, so at 56 px one score point is about
10 px of side: which of two images scores higher is plain to see unless their scores are close.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from data_shards.synthetic.drawing import PlacedShape, render
from data_shards.synthetic.files import save_image, write_text
from data_shards.synthetic.plan import Plan, SyntheticDataset

FORMAT = "scores"
SCORE_RANGE = (1.0, 5.0)
SCORE_NOISE = 0.05
COLOR = "blue"


def side_range(image_size: int) -> tuple[int, int]:
    return round(image_size * 0.2), round(image_size * 0.9)


def true_score(side: int, image_size: int) -> float:
    low, high = side_range(image_size)
    return SCORE_RANGE[0] + (SCORE_RANGE[1] - SCORE_RANGE[0]) * (side - low) / (high - low)


def square_image(plan: Plan, side: int) -> Image.Image:
    """The square anywhere inside the image, on white."""
    x, y = (int(plan.rng.integers(0, plan.image_size - side + 1)) for _ in range(2))
    return render([PlacedShape("square", COLOR, x, y, side)], "white", plan.image_size, plan.rng)


def write_scores(plan: Plan) -> SyntheticDataset:
    if plan.defects:
        raise ValueError("the scores format has no defect records (a bad score file fails as a whole)")
    low, high = side_range(plan.image_size)
    lines = []
    for index in range(plan.n):
        side = int(plan.rng.integers(low, high + 1))
        name = f"s{index:05d}.jpg"
        save_image(square_image(plan, side), plan.root / "Images" / name)
        score = np.clip(true_score(side, plan.image_size) + plan.rng.normal(0, SCORE_NOISE), *SCORE_RANGE)
        lines.append(f"{name} {score:.6f}")
    write_text(plan.root / "labels.txt", "\n".join(lines) + "\n")
    return SyntheticDataset(FORMAT, plan.root / "labels.txt", plan.root / "Images", plan.n, {}, {})
