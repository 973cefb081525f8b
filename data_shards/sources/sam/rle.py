"""COCO run-length masks in numpy: the counts lists and the compressed strings pycocotools writes.

A COCO RLE is `{"size": [h, w], "counts": ...}`: run lengths over the mask in column-major order
(down the first column, then the next), starting with a run of zeros (0 when the first pixel is set).
`counts` is either that list of ints or pycocotools' string form: each count, minus the count two
before it from the fourth on, in 5-bit groups, least significant first, one character per group
(`chr(48 + group)`, bit 0x20 set while more groups follow, bit 0x10 of the last group the sign).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


class RleError(ValueError):
    """Counts that do not describe an h x w mask (bad characters, negative runs, wrong total)."""


def counts_from_string(text: str) -> list[int]:
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise RleError(f"counts string ends inside a value at character {position}")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise RleError(f"character {text[position]!r} at {position} is outside the RLE alphabet")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    characters = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            characters.append(chr(48 + (group | 0x20 if more else group)))
    return "".join(characters)


def rle_counts(rle: dict) -> list[int]:
    """The run lengths of an RLE dict, whichever form its counts take."""
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        return counts_from_string(counts)
    if isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        return counts
    raise RleError(f"counts must be a string or a list of integers, got {type(counts).__name__}")


def rle_size(rle: dict) -> tuple[int, int]:
    size = rle.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, (int, float)) for v in size)):
        raise RleError(f"size must be [height, width], got {size!r}")
    return int(size[0]), int(size[1])


def decode(rle: dict) -> np.ndarray:
    """The boolean (h, w) mask of an RLE dict; RleError when the counts do not fill exactly h x w pixels."""
    height, width = rle_size(rle)
    counts = np.asarray(rle_counts(rle), dtype=np.int64)
    if (counts < 0).any():
        raise RleError(f"negative run length {int(counts.min())}")
    if int(counts.sum()) != height * width:
        raise RleError(f"runs cover {int(counts.sum())} pixels, size {height}x{width} has {height * width}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((height, width), order="F")


def encode(mask: np.ndarray, compressed: bool = True) -> dict:
    """The RLE dict of a 2-D mask, counts as pycocotools' string (default) or as a list."""
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [height, width], "counts": counts_to_string(counts) if compressed else counts}


def polygon_mask(polygons: list, height: int, width: int) -> np.ndarray:
    """COCO polygons ([[x1, y1, x2, y2, ...], ...]) filled as one mask (pixel centres at integer coordinates)."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            raise RleError(f"a polygon needs at least three x, y pairs, got {polygon!r:.60}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon):
            raise RleError("polygon coordinates must be numbers")
        draw.polygon([(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2])], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)
