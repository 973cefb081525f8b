"""Image-pair comparison CSV (LMOL-style): `img1,img2,label[,score1,score2]` → one two-image sample."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import Turn
from data_shards.sources.common import SourceOptions, read_text

NAME = "pairs"
LABELS = ("First", "Second", "Similar")
REQUIRED_COLUMNS = ("img1", "img2", "label")


def default_image_root(path: Path) -> Path:
    return path.parent


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    rows = csv.DictReader(read_text(path).splitlines())
    missing = [column for column in REQUIRED_COLUMNS if column not in (rows.fieldnames or [])]
    if missing:
        raise SourceError(f"{path}: CSV header lacks {missing} (found {rows.fieldnames})")
    for number, row in enumerate(rows, start=1):
        key, origin = f"row{number:06d}", f"{path.name}:{number + 1}"
        try:
            yield parse_row(row, key, origin, options)
        except ValueError as error:
            yield Reject(key, "malformed_record", str(error), origin)


def parse_row(row: dict, key: str, origin: str, options: SourceOptions) -> RawSample:
    label = canonical_label(row.get("label") or "")
    extra: dict = {"choices": list(LABELS)}
    for column in ("score1", "score2"):
        if row.get(column) not in (None, ""):
            try:
                extra[column] = float(row[column])
            except ValueError:
                raise ValueError(f"{column} is not a number: {row[column]!r}") from None
    images = [row["img1"] or "", row["img2"] or ""]
    if not all(images):
        raise ValueError("img1 and img2 must both be set")
    turns = [Turn("user", options.pairs_question), Turn("assistant", label)]
    return RawSample(key, images, turns, origin, label=label, source=NAME, extra=extra)


def canonical_label(value: str) -> str:
    for label in LABELS:
        if value.strip().lower() == label.lower():
            return label
    raise ValueError(f"label {value!r} is not one of {LABELS}")
