"""Pictures of coloured shapes: placing a shape, drawing it on a plain background, adding mild noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from data_shards.synthetic.vocabulary import BACKGROUNDS, COLORS, SHAPES

MIN_IMAGE_SIZE = 16
NOISE_AMPLITUDE = 6

T = TypeVar("T")


@dataclass(frozen=True)
class PlacedShape:
    """A shape with its square bounding box: top-left corner (x, y) and side length, in pixels."""

    shape: str
    color: str
    x: int
    y: int
    extent: int

    @property
    def corners(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.extent - 1, self.y + self.extent - 1)

    @property
    def bbox(self) -> list[int]:
        return [self.x, self.y, self.extent, self.extent]


def _fill_shape(draw: ImageDraw.ImageDraw, placed: PlacedShape) -> None:
    """Draws the shape so that it touches all four sides of its bounding box."""
    left, top, right, bottom = placed.corners
    fill = COLORS[placed.color]
    if placed.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif placed.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif placed.shape == "triangle":
        draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    else:
        arm = max(1, placed.extent // 3)
        start = (placed.extent - arm) // 2
        draw.rectangle((left, top + start, right, top + start + arm - 1), fill=fill)
        draw.rectangle((left + start, top, left + start + arm - 1, bottom), fill=fill)


def _add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def render(shapes: Sequence[PlacedShape], background: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws the shapes on a plain square background, then adds mild per-pixel noise."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for placed in shapes:
        _fill_shape(draw, placed)
    return _add_noise(image, rng)


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _centered(shape: str, color: str, size: int, rng: np.random.Generator, extent: int | None = None) -> PlacedShape:
    """Places a shape near the centre: side 45-75% of the image unless given, shifted by up to 1/8."""
    if extent is None:
        extent = int(rng.integers(round(size * 0.45), round(size * 0.75) + 1))
    slack = size - extent
    shift = min(slack // 2, size // 8)
    x = slack // 2 + int(rng.integers(-shift, shift + 1))
    y = slack // 2 + int(rng.integers(-shift, shift + 1))
    return PlacedShape(shape, color, x, y, extent)


def require(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {tuple(allowed)}")


@dataclass(frozen=True)
class Picture:
    image: Image.Image
    shape: str
    color: str
    background: str

    def answer(self, topic: str) -> str:
        return self.color if topic == "color" else self.shape

    def caption(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background"


def random_picture(
    rng: np.random.Generator,
    size: int,
    *,
    shape: str | None = None,
    color: str | None = None,
    extent: int | None = None,
) -> Picture:
    shape = shape or pick(rng, SHAPES)
    color = color or pick(rng, tuple(COLORS))
    background = pick(rng, tuple(BACKGROUNDS))
    placed = _centered(shape, color, size, rng, extent)
    return Picture(render([placed], background, size, rng), shape, color, background)
