"""Odd but valid images (CMYK, palette, 16-bit, transparent, EXIF-rotated) and captions in foreign scripts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from data_shards.synthetic.drawing import NOISE_AMPLITUDE, Picture
from data_shards.synthetic.files import save_image
from data_shards.synthetic.vocabulary import BACKGROUNDS, FOREIGN_TEXTS


def _as_cmyk(image: Image.Image, background: str) -> Image.Image:
    return image.convert("CMYK")


def _as_palette(image: Image.Image, background: str) -> Image.Image:
    return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)


def _as_16bit_gray(image: Image.Image, background: str) -> Image.Image:
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(gray)


def _as_rgba(image: Image.Image, background: str) -> Image.Image:
    """Background pixels become fully transparent, the shape stays opaque."""
    pixels = np.asarray(image)
    distance = np.abs(pixels.astype(np.int16) - np.array(BACKGROUNDS[background])).max(axis=2)
    alpha = np.where(distance > 3 * NOISE_AMPLITUDE, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([pixels, alpha]))


def _as_exif_rotated(image: Image.Image, background: str) -> Image.Image:
    """A landscape picture stored turned a quarter left; EXIF orientation 6 tells readers to turn it back."""
    width, height = image.size
    upright = Image.new("RGB", (width + width // 2, height), BACKGROUNDS[background])
    upright.paste(image, (0, 0))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    stored.info["exif"] = exif.tobytes()
    return stored


_Converter = Callable[[Image.Image, str], Image.Image]
UNUSUAL_IMAGES: dict[str, tuple[_Converter, str, str]] = {
    "cmyk": (_as_cmyk, ".jpg", "CMYK JPEG"),
    "palette": (_as_palette, ".png", "palette (P) PNG"),
    "16bit": (_as_16bit_gray, ".png", "16-bit grayscale (I;16) PNG"),
    "rgba": (_as_rgba, ".png", "RGBA PNG with a transparent background"),
    "exif": (_as_exif_rotated, ".jpg", "JPEG stored rotated, EXIF orientation 6"),
}


def write_unusual_image(kind: str, image: Image.Image, background: str, folder: Path, stem: str) -> Path:
    convert, extension, _ = UNUSUAL_IMAGES[kind]
    path = folder / (stem + extension)
    save_image(convert(image, background), path)
    return path


def unusual_topic(kind: str) -> str:
    """A grayscale image has no colour to ask about."""
    return "shape" if kind == "16bit" else "color"


def foreign_caption(language: str, picture: Picture) -> str:
    text = FOREIGN_TEXTS[language]
    return text.caption.format(word=text.words[picture.color], shape=picture.shape)
