"""What source readers produce: raw samples (images still as paths) and rejects with reason codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_shards.sample import Turn

REASONS = {
    "malformed_json": "a line or file is not valid JSON",
    "malformed_record": "a record lacks a required field or has the wrong type",
    "missing_image": "an image file does not exist",
    "zero_byte_image": "an image file is empty",
    "unreadable_image": "an image file cannot be decoded",
    "truncated_image": "an image file ends early",
    "image_too_large": "an image has more pixels than allowed (decompression bomb guard)",
    "path_escapes_root": "an image path points outside the dataset root",
    "missing_caption": "an image has no caption file",
    "empty_answer": "no assistant turn, or an empty one",
    "placeholder_mismatch": "the number of <image> placeholders differs from the number of images",
    "duplicate_sample": "an exact copy (same text and images) of an earlier sample",
    "malformed_mask": "a mask's RLE or polygon cannot be decoded, or its runs do not fill its size",
    "mask_size_mismatch": "a mask's size, or its frame's, differs from the image size the annotations state",
    "empty_mask": "a mask has no pixels where the annotation says the object is",
    "bbox_outside_image": "an annotation's bbox lies outside its image",
    "mask_outside_bbox": "a mask has pixels outside its annotation's bbox",
    "mask_area_mismatch": "a mask's pixel count differs from its annotation's area beyond tolerance",
    "time_gap": "a frame dropped by --split-by time: within --time-gap frames of the previous split",
}


class SourceError(Exception):
    """The input as a whole cannot be read (missing file, not JSON, unknown format)."""


@dataclass
class RawSample:
    """A sample as a source describes it: images are still references, relative to the image root or absolute
    inside it (`validate.root_relative` makes them relative)."""

    key: str
    image_refs: list[str]
    turns: list[Turn]
    origin: str
    label: str | None = None
    group: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # the split the source itself assigns (kept by `--split-by source`)


@dataclass
class Reject:
    key: str | None
    reason: str
    detail: str
    origin: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}")

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "reason": self.reason, "detail": self.detail, "origin": self.origin}
