"""One small reader per raw dataset shape; `detect_format` picks one when `--format` is not given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sources import (
    captions,
    classes,
    coco,
    flowers,
    hf_disk,
    llava,
    manifest,
    messages,
    pairs,
    parquet,
    sam,
)
from data_shards.sources.common import SourceOptions, read_text

READERS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (llava, messages, captions, manifest, classes, pairs, coco, flowers, parquet, hf_disk, sam)
}
FOLDER_FORMATS = ("captions", "classes")
OWN_INPUT_FORMATS = (flowers.NAME, parquet.NAME, hf_disk.NAME, sam.NAME)  # readers that check file-or-folder themselves

__all__ = ["READERS", "Source", "SourceOptions", "detect_format", "open_source"]


@dataclass
class Source:
    format: str
    input: Path
    image_root: Path
    options: SourceOptions

    def records(self) -> Iterator[RawSample | Reject]:
        return READERS[self.format].read(self.input, self.image_root, self.options)


def open_source(
    fmt: str | None, input_path: Path, image_root: Path | None = None, options: SourceOptions | None = None
) -> Source:
    input_path = Path(input_path)
    if not input_path.exists():
        raise SourceError(f"{input_path}: no such file or folder")
    fmt = fmt or detect_format(input_path)
    if fmt not in READERS:
        raise SourceError(f"unknown format {fmt!r}; choose one of {sorted(READERS)}")
    if fmt in FOLDER_FORMATS and not input_path.is_dir():
        raise SourceError(f"{input_path}: the {fmt} format expects a folder")
    if fmt not in FOLDER_FORMATS + OWN_INPUT_FORMATS and input_path.is_dir():
        raise SourceError(f"{input_path}: the {fmt} format expects a file, got a folder")
    root = input_path if fmt in FOLDER_FORMATS else Path(image_root or READERS[fmt].default_image_root(input_path))
    if not root.is_dir():
        raise SourceError(f"{root}: image root is not a folder")
    return Source(fmt, input_path, root, options or SourceOptions())


def detect_format(path: Path) -> str:
    if path.is_dir():
        for name in (sam.NAME, flowers.NAME, hf_disk.NAME, "classes", "captions", parquet.NAME):
            if READERS[name].detect_folder(path):
                return name
        raise SourceError(f"{path}: a folder that is neither class folders nor images with .txt captions")
    if path.suffix.lower() == ".csv":
        return "pairs"
    if path.suffix.lower() == ".parquet":
        return parquet.NAME
    if path.suffix.lower() == ".zip":
        return sam.NAME
    first = first_json_value(path)
    for name in ("coco", sam.NAME, "manifest", "llava", "messages"):
        if READERS[name].detect(first):
            return name
    raise SourceError(f"{path}: cannot tell its format; pass --format (one of {sorted(READERS)})")


def first_json_value(path: Path):
    """The whole document for a JSON object, else the first record of a JSON list or JSONL file."""
    text = read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        for line in text.splitlines():
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        raise SourceError(f"{path}: not JSON or JSONL") from None
    if isinstance(document, list):
        return document[0] if document else None
    return document
