"""What the format writers share: the `Plan` they follow and the `SyntheticDataset` they return."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_shards.synthetic.drawing import Picture, random_picture
from data_shards.synthetic.files import save_image


@dataclass
class SyntheticDataset:
    """Where a written dataset lies (`input`, `image_root` as the CLI takes them) and what it holds."""

    format: str
    input: Path
    image_root: Path | None
    num_records: int
    defects: dict[str, str]
    unusual: dict[str, str]


@dataclass
class Plan:
    root: Path
    rng: np.random.Generator
    n: int
    image_size: int
    task: str
    defects: bool
    unusual: bool
    jsonl: bool
    class_names: bool

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def picture(self, **fixed: Any) -> Picture:
        return random_picture(self.rng, self.image_size, **fixed)

    def save(self, image: Image.Image, stem: str) -> str:
        """Saves a JPEG under images/ and returns its path relative to the root."""
        save_image(image, self.images_dir / f"{stem}.jpg")
        return f"images/{stem}.jpg"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()
