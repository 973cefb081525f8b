"""What the SA-V, SA-1B and COCO parts share: checking a frame file against its annotations, and the sample."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from typing import Any

from PIL import Image

from data_shards.records import RawSample
from data_shards.sources.sam.export import Export
from data_shards.sources.sam.masks import MaskedObject, MaskError
from data_shards.sources.sam.questions import conversation

NAME = "sam"


class FrameLog:
    """Frames read so far by content hash, so a later byte-identical frame is noted as a duplicate."""

    def __init__(self) -> None:
        self.first_key: dict[str, str] = {}

    def inspect(self, export: Export, member: str | None, key: str, shape: tuple[int, int], where: str) -> dict:
        """Extra fields for the frame (`notes`, `duplicate_of`); MaskError when its pixel size is not `shape`.
        A missing or undecodable frame passes: the image checks reject it with their own reason."""
        if member is None:
            return {}
        data = export.read_bytes(member)
        try:
            width, height = Image.open(io.BytesIO(data)).size
        except (OSError, ValueError, SyntaxError):
            return {}
        if (height, width) != shape:
            detail = f"{where}: frame {member} is {height}x{width}, the annotations are for {shape[0]}x{shape[1]}"
            raise MaskError("mask_size_mismatch", detail)
        first = self.first_key.setdefault(hashlib.sha256(data).hexdigest(), key)
        return {} if first == key else {"notes": ["duplicate_frame"], "duplicate_of": first}


def make_sample(
    key: str,
    ref: str,
    objects: list[MaskedObject],
    shape: tuple[int, int],
    origin: str,
    extra: dict[str, Any],
    named: bool = False,
    group: str | None = None,
) -> RawSample:
    """One sample per frame; a frame without objects gets the note `no_objects`."""
    height, width = shape
    thing = "frame" if "frame_index" in extra else "image"
    notes = list(extra.pop("notes", [])) + ([] if objects else ["no_objects"])
    extra = {**extra, "object_ids": [o.id for o in objects], **({"notes": notes} if notes else {})}
    if named:
        extra["categories"] = [o.name for o in objects]
    counts = Counter(o.name for o in objects)
    label = counts.most_common(1)[0][0] if named and counts else None
    turns = conversation(objects, width, height, thing, named)
    return RawSample(key, [ref], turns, origin, label=label, group=group, source=NAME, extra=extra)
