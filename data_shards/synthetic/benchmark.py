"""`make_loose_benchmark_set`: many distinct LLaVA colour questions, cheaply, for loader benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_shards.synthetic.conversations import Conversation, llava_record
from data_shards.synthetic.drawing import MIN_IMAGE_SIZE, random_picture
from data_shards.synthetic.files import JPEG_QUALITY, write_json
from data_shards.synthetic.vocabulary import QUESTIONS

BENCHMARK_BASE_IMAGES = 128
BENCHMARK_STAMP_BITS = 24


def _jittered(bases: np.ndarray, index: int) -> np.ndarray:
    """A base picture shifted by up to 2 px, the index's bits stamped into its first pixels: no two files are equal."""
    variant = index // len(bases)
    pixels = np.roll(bases[index % len(bases)], (variant % 5 - 2, variant // 5 % 5 - 2), axis=(0, 1))
    bits = (index >> np.arange(BENCHMARK_STAMP_BITS)) & 1
    pixels.reshape(-1, 3)[:BENCHMARK_STAMP_BITS] = np.where(bits[:, None] == 1, 160, 250)
    return pixels


def make_loose_benchmark_set(out: Path, n: int, image_size: int, seed: int = 0, height: int | None = None) -> Path:
    """n single-turn colour questions as a LLaVA JSON list, one distinct JPEG each; returns the JSON path.

    The image root is `out`. Pictures are drawn once for a few base images and jittered per record; they are
    `image_size` wide and `height` (default: as wide) high, e.g. 640 × 480 like a photo.
    """
    if n < 1 or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"need n >= 1 and image_size >= {MIN_IMAGE_SIZE}, got n={n}, image_size={image_size}")
    out = Path(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pictures = [random_picture(rng, image_size) for _ in range(min(n, BENCHMARK_BASE_IMAGES))]
    bases = np.stack([np.asarray(picture.image) for picture in pictures])[:, : height or image_size]
    for index in range(n):
        Image.fromarray(_jittered(bases, index)).save(images_dir / f"s{index:06d}.jpg", "JPEG", quality=JPEG_QUALITY)
    records = [
        llava_record(
            Conversation(
                f"s{index:06d}",
                (f"images/s{index:06d}.jpg",),
                ((QUESTIONS["color"], pictures[index % len(pictures)].color),),
            )
        )
        for index in range(n)
    ]
    path = out / "data.json"
    write_json(path, records)
    return path
