"""The pairs format: a CSV of image pairs labelled by which one shows the bigger shape."""

from __future__ import annotations

import csv
from typing import NamedTuple

from data_shards.synthetic.drawing import pick
from data_shards.synthetic.plan import Plan, SyntheticDataset


class _PairRow(NamedTuple):
    img1: str
    img2: str
    label: str
    score1: int
    score2: int


def _pair_margin(image_size: int) -> int:
    return max(1, image_size // 16)


def pair_label(score1: int, score2: int, margin: int) -> str:
    if score1 > score2 + margin:
        return "First"
    if score2 > score1 + margin:
        return "Second"
    return "Similar"


def _pair_extents(image_size: int) -> range:
    """Shape sides a pair image may have: 30% to 80% of the image."""
    return range(round(image_size * 0.3), round(image_size * 0.8) + 1)


def _second_extent(plan: Plan, first: int) -> int:
    """About one pair in five is Similar; the others differ by more than the margin, in either direction."""
    margin = _pair_margin(plan.image_size)
    similar = plan.rng.random() < 0.2
    extents = _pair_extents(plan.image_size)
    return pick(plan.rng, [extent for extent in extents if (abs(extent - first) <= margin) == similar])


def _pair_image(plan: Plan, stem: str, extent: int) -> tuple[str, int]:
    """A picture whose score is its shape's side in pixels."""
    return plan.save(plan.picture(extent=extent).image, stem), extent


def _good_pair_rows(plan: Plan) -> list[_PairRow]:
    """n rows; every fourth row re-uses the previous row's second image as its first."""
    rows: list[_PairRow] = []
    margin = _pair_margin(plan.image_size)
    for number in range(1, plan.n + 1):
        stem = f"row{number:06d}"
        if number % 4 == 0:
            first = (rows[-1].img2, rows[-1].score2)
        else:
            first = _pair_image(plan, f"{stem}_a", pick(plan.rng, _pair_extents(plan.image_size)))
        second = _pair_image(plan, f"{stem}_b", _second_extent(plan, first[1]))
        rows.append(_PairRow(first[0], second[0], pair_label(first[1], second[1], margin), first[1], second[1]))
    return rows


def _defect_pair_rows(first: _PairRow) -> list[tuple[_PairRow, str]]:
    return [
        (first._replace(img1="images/d_missing_image.jpg"), "missing_image"),
        (first._replace(label="Maybe"), "malformed_record"),
    ]


def write_pairs(plan: Plan) -> SyntheticDataset:
    """Defect rows come last so that every good row's images are named after its row number."""
    rows = _good_pair_rows(plan)
    defects = _defect_pair_rows(rows[0]) if plan.defects else []
    path = plan.root / "pairs.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(_PairRow._fields)
        writer.writerows(rows + [row for row, _ in defects])
    reasons = {f"row{len(rows) + offset:06d}": reason for offset, (_, reason) in enumerate(defects, start=1)}
    return SyntheticDataset("pairs", path, plan.root, len(rows) + len(defects), reasons, {})
