"""Per-image scores: SCUT-FBP5500's `name score` lines (whitespace separated), or a CSV with header `image,score`."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_shards.pairs.errors import PairsError, raise_if_any
from data_shards.sources.common import read_text

CSV_COLUMNS = ("image", "score")


@dataclass(frozen=True)
class ScoredImage:
    name: str
    score: float
    origin: str


def read_scores(path: Path) -> list[ScoredImage]:
    """Every image with its score, sorted by name; all malformed lines and duplicates are reported at once."""
    images: list[ScoredImage] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    for number, fields in score_rows(path, read_text(path).splitlines()):
        origin = f"{path}:{number}"
        try:
            image = parse_fields(fields, origin)
        except ValueError as error:
            problems.append(f"{origin}: {error}")
            continue
        if image.name in first_seen:
            problems.append(f"{origin}: duplicate image {image.name!r} (first at {first_seen[image.name]})")
            continue
        first_seen[image.name] = origin
        images.append(image)
    raise_if_any(f"{path}: malformed score lines", problems)
    if not images:
        raise PairsError(f"{path}: no scores")
    return sorted(images, key=lambda image: image.name)


def score_rows(path: Path, lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank data line."""
    first = next((line for line in lines if line.strip()), "")
    if "," not in first:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line.split()
        return
    rows = csv.DictReader(lines)
    missing = [column for column in CSV_COLUMNS if column not in (rows.fieldnames or [])]
    if missing:
        raise PairsError(f"{path}: CSV header lacks {missing} (found {rows.fieldnames})")
    for row in rows:
        yield rows.line_num, [(row[column] or "").strip() for column in CSV_COLUMNS]


def parse_fields(fields: list[str], origin: str) -> ScoredImage:
    if len(fields) != 2 or not all(fields):
        raise ValueError(f"expected an image name and a score, got {fields}")
    name, text = fields
    try:
        score = float(text)
    except ValueError:
        raise ValueError(f"score {text!r} of {name!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"score {text!r} of {name!r} is not finite")
    return ScoredImage(name, score, origin)
