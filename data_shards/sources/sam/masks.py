"""Per-annotation checks on masks, and what a sample needs to know of each mask (box, area, centre).

Tolerances, and why:
- area: the stated `area` may differ from the mask's pixel count by 2% + 1 px for RLE masks (SA-1B and
  COCO compute it from that very mask, so only rounding by exporters that measure a resized or float
  mask is allowed), plus the mask's boundary pixels for polygons (COCO measures polygons with another
  rasteriser, which can disagree on every boundary pixel);
- boxes: 1 px on every side, for float boxes rounded either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_shards.sources.sam.rle import RleError, decode, polygon_mask, rle_size

AREA_RELATIVE = 0.02
BOX_SLACK = 1.0


class MaskError(ValueError):
    """A broken annotation; `reason` is the reject code, `detail` names the file and object."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MaskedObject:
    """One object as the questions see it: a name, its mask's tight box (x0, y0, x1, y1 in pixels, ends
    exclusive), pixel area and centre."""

    id: int | str
    name: str
    box: tuple[int, int, int, int]
    area: int
    centre: tuple[float, float]


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a non-empty mask, ends exclusive."""
    y = np.flatnonzero(mask.any(axis=1))
    x = np.flatnonzero(mask.any(axis=0))
    return int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1


def measure(object_id: int | str, name: str, mask: np.ndarray) -> MaskedObject:
    """Box, area and centre of a non-empty mask."""
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    area = int(rows.sum())
    centre = (float(cols @ np.arange(cols.size)) / area + 0.5, float(rows @ np.arange(rows.size)) / area + 0.5)
    return MaskedObject(object_id, name, tight_box(mask), area, centre)


def segmentation_mask(segmentation, height: int, width: int, where: str) -> tuple[np.ndarray, bool]:
    """The mask of an RLE dict or COCO polygon list, and whether it came from polygons."""
    try:
        if isinstance(segmentation, list):
            return polygon_mask(segmentation, height, width), True
        if not isinstance(segmentation, dict):
            raise RleError(f"segmentation must be an RLE dict or a polygon list, got {type(segmentation).__name__}")
        size = rle_size(segmentation)
        if size != (height, width):
            detail = f"{where}: RLE size {size[0]}x{size[1]} differs from the image's {height}x{width} (h x w)"
            raise MaskError("mask_size_mismatch", detail)
        return decode(segmentation), False
    except RleError as error:
        raise MaskError("malformed_mask", f"{where}: {error}") from None


def boundary_pixels(mask: np.ndarray) -> int:
    """Mask pixels with a 4-neighbour outside the mask (or on the image edge)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, :-2] & padded[1:-1, 2:] & padded[:-2, 1:-1] & padded[2:, 1:-1]
    return int((mask & ~inner).sum())


def check_box(bbox, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    """A COCO [x, y, w, h] box as (x0, y0, x1, y1), which must lie inside the image."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise MaskError("malformed_mask", f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    s = BOX_SLACK
    if w <= 0 or h <= 0 or x < -s or y < -s or x + w > width + s or y + h > height + s:
        raise MaskError("bbox_outside_image", f"{where}: bbox {bbox} lies outside the {width}x{height} image")
    return x, y, x + w, y + h


def check_annotated(mask: np.ndarray, polygon: bool, bbox, area, shape: tuple[int, int], where: str) -> None:
    """SA-1B / COCO rules: a non-empty mask inside its box (itself inside the image), of about the stated area."""
    height, width = shape
    box = check_box(bbox, width, height, where) if bbox is not None else None
    pixels = int(mask.sum())
    if pixels == 0:
        raise MaskError("empty_mask", f"{where}: the mask has no pixels")
    if box is not None:
        tight = tight_box(mask)
        s = BOX_SLACK
        if tight[0] < box[0] - s or tight[1] < box[1] - s or tight[2] > box[2] + s or tight[3] > box[3] + s:
            detail = f"{where}: mask spans x {tight[0]}..{tight[2]}, y {tight[1]}..{tight[3]}, outside bbox {bbox}"
            raise MaskError("mask_outside_bbox", detail)
    if area is not None:
        if not isinstance(area, (int, float)):
            raise MaskError("malformed_mask", f"{where}: area must be a number, got {area!r}")
        tolerance = 1 + AREA_RELATIVE * pixels + (boundary_pixels(mask) if polygon else 0)
        if abs(float(area) - pixels) > tolerance:
            detail = f"{where}: area {area:g} but the mask has {pixels} pixels (tolerance {tolerance:.0f})"
            raise MaskError("mask_area_mismatch", detail)
