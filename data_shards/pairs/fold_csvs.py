"""Per-fold pair CSVs made elsewhere (LMOL's `train_fold{k}_*.csv`, `eval_fold{k}_*.csv`): finding them, and the
images each names."""

from __future__ import annotations

import csv
import fnmatch
import glob
import re
from pathlib import Path

from data_shards.pairs.errors import PairsError
from data_shards.sources.common import read_text
from data_shards.sources.pairs import REQUIRED_COLUMNS

FOLD_FIELD = "{k}"


def fold_files(pattern: str) -> dict[int, Path]:
    """The one file per fold number that `pattern` (a glob with `{k}` where the number stands) matches."""
    if pattern.count(FOLD_FIELD) != 1:
        raise PairsError(f"--fold-csvs pattern {pattern!r} must hold {FOLD_FIELD} once, where the fold number is")
    regex = re.compile(fnmatch.translate(pattern.replace(FOLD_FIELD, "\0")).replace("\0", "(?P<k>[0-9]+)"))
    found: dict[int, list[str]] = {}
    for path in sorted(glob.glob(pattern.replace(FOLD_FIELD, "*"))):
        match = regex.fullmatch(path)
        if match:
            found.setdefault(int(match["k"]), []).append(path)
    if not found:
        raise PairsError(f"--fold-csvs pattern {pattern!r} matches no file")
    several = {k: paths for k, paths in found.items() if len(paths) > 1}
    if several:
        raise PairsError(f"--fold-csvs pattern {pattern!r} matches several files for a fold: {several}")
    return {k: Path(paths[0]) for k, paths in sorted(found.items())}


def paired_fold_files(train_pattern: str, val_pattern: str) -> dict[int, dict[str, Path]]:
    train, val = fold_files(train_pattern), fold_files(val_pattern)
    if set(train) != set(val):
        raise PairsError(
            f"folds differ: {train_pattern!r} has folds {sorted(train)}, {val_pattern!r} has {sorted(val)}"
        )
    return {k: {"train": train[k], "val": val[k]} for k in train}


def named_images(path: Path) -> dict[str, str]:
    """Each image the CSV names (img1 or img2), with the file:line that first names it."""
    rows = csv.DictReader(read_text(path).splitlines())
    missing = [column for column in REQUIRED_COLUMNS if column not in (rows.fieldnames or [])]
    if missing:
        raise PairsError(f"{path}: CSV header lacks {missing} (found {rows.fieldnames})")
    names: dict[str, str] = {}
    for row in rows:
        for column in ("img1", "img2"):
            if row.get(column):
                names.setdefault(row[column], f"{path}:{rows.line_num}")
    return names
