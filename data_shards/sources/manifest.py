"""A JSON manifest `{image_path: caption}`; paths are relative to the image root (default: the file's folder)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import Turn
from data_shards.sources.common import SourceOptions, load_json

NAME = "manifest"


def detect(document: Any) -> bool:
    return isinstance(document, dict) and bool(document) and all(isinstance(v, str) for v in document.values())


def default_image_root(path: Path) -> Path:
    return path.parent


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    document = load_json(path)
    if not isinstance(document, dict):
        raise SourceError(f"{path}: a manifest must be a JSON object {{image: caption}}")
    for image_ref, caption in document.items():
        origin = f"{path.name}[{image_ref!r}]"
        if not isinstance(caption, str):
            yield Reject(
                image_ref, "malformed_record", f"caption must be a string, got {type(caption).__name__}", origin
            )
            continue
        turns = [Turn("user", options.caption_prompt), Turn("assistant", caption.strip())]
        yield RawSample(image_ref, [image_ref], turns, origin, source=NAME)
