"""`OUT/folds.json`: how the folds were made, the guarantee checked on them, and per fold and side the images
(count, a hash of the sorted names; the val side lists them) and the pairs (rows = written + rejected, labels)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from data_shards.pairs.leakage import Sides, guarantee
from data_shards.pairs.shards import SIDES

SUMMARY_NAME = "folds.json"


def fold_summary(
    how: dict[str, Any],
    folds: dict[int, Sides],
    hashes: dict[str, str],
    reports: dict[int, dict[str, Any]],
    scores: dict[str, float] | None = None,
) -> dict[str, Any]:
    counted = [report["sides"][side] for report in reports.values() for side in SIDES]
    totals = {key: sum(counts[key] for counts in counted) for key in ("rows", "written", "rejected")}
    return {
        **how,
        "guarantee": guarantee(folds, hashes),
        "pairs": totals,
        "folds": {
            f"fold{number}": {side: side_summary(side, folds[number][side], reports[number], scores) for side in SIDES}
            for number in folds
        },
    }


def side_summary(side: str, names: set[str], report: dict[str, Any], scores: dict[str, float] | None) -> dict:
    ordered = sorted(names)
    summary: dict[str, Any] = {
        "images": len(ordered),
        "names_sha256": hashlib.sha256("\n".join(ordered).encode()).hexdigest(),
        "pairs": {**report["sides"][side], "labels": report["splits"][side]["labels"]},
    }
    if scores is not None:
        values = np.asarray([scores[name] for name in ordered])
        summary["score"] = {stat: round(float(getattr(np, stat)(values)), 6) for stat in ("mean", "std", "min", "max")}
    if side == "val":
        summary["names"] = ordered
    return summary


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    path = out / SUMMARY_NAME
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
