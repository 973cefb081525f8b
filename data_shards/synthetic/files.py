"""Writing files with fixed settings, and the broken or out-of-root images that defect records point to."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_shards.synthetic.drawing import random_picture
from data_shards.synthetic.vocabulary import COLORS

JPEG_QUALITY = 90
BOMB_SIDE = 10000
OUTSIDE_IMAGE = "../outside.jpg"
BROKEN_IMAGE_REASONS = ("zero_byte_image", "truncated_image", "unreadable_image", "image_too_large")

_SAVE_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def save_image(image: Image.Image, path: Path) -> None:
    """Saves by extension with fixed settings; EXIF is written only when the image carries some."""
    image_format = _SAVE_FORMATS[path.suffix]
    options: dict[str, Any] = {"exif": image.info.get("exif", b"")}
    if image_format in ("JPEG", "WEBP"):
        options["quality"] = JPEG_QUALITY
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, image_format, **options)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, ensure_ascii=False, sort_keys=True, indent=1) + "\n")


def json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@functools.cache
def _bomb_png() -> bytes:
    """A BOMB_SIDE² one-colour PNG at one bit per pixel: a few KB on disk, 100 megapixels once decoded."""
    image = Image.new("P", (BOMB_SIDE, BOMB_SIDE), 0)
    image.putpalette([*COLORS["orange"], 0, 0, 0])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", bits=1)
    return buffer.getvalue()


def _broken_image_bytes(reason: str, rng: np.random.Generator, size: int) -> bytes:
    if reason == "zero_byte_image":
        return b""
    if reason == "unreadable_image":
        return rng.bytes(2048)
    if reason == "truncated_image":
        # At least 128 px so that half the file still holds every header and the cut falls in the scan data.
        data = _jpeg_bytes(random_picture(rng, max(size, 128)).image)
        return data[: len(data) // 2]
    return _bomb_png()


def write_broken_image(reason: str, folder: Path, stem: str, rng: np.random.Generator, size: int) -> Path:
    path = folder / (stem + (".png" if reason == "image_too_large" else ".jpg"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_broken_image_bytes(reason, rng, size))
    return path


def write_outside_image(root: Path) -> str:
    """Writes the real file that `../outside.jpg` points to; its content does not depend on the dataset."""
    picture = random_picture(np.random.default_rng(0), 32)
    save_image(picture.image, root / OUTSIDE_IMAGE)
    return OUTSIDE_IMAGE
