"""Reader notes in the report: unusual frames kept (`extra.notes`) and object categories (`extra.categories`).

A reader that knows more than one label per sample (the `sam` format: a duplicate frame, a frame without
objects, the category of every object) leaves it in `extra`; this counts it over the kept samples and flags
a category imbalance above 10:1, which per-sample labels (the most common category of an image) would hide.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

IMBALANCE_FLAG = 10.0
EXAMPLES = 5


def annotation_stats(kept: list) -> dict[str, Any]:
    """`{"annotations": ...}` when a reader left notes or categories, else nothing (other reports stay as they were)."""
    notes: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    categories: Counter = Counter()
    for sample in kept:
        for note in sample.raw.extra.get("notes", ()):
            notes[note] += 1
            if len(examples[note]) < EXAMPLES:
                examples[note].append(sample.raw.key)
        categories.update(sample.raw.extra.get("categories", ()))
    if not notes and not categories:
        return {}
    ratio = max(categories.values()) / min(categories.values()) if categories else None
    return {
        "annotations": {
            "notes": dict(sorted(notes.items())),
            "note_examples": dict(sorted(examples.items())),
            "categories": dict(sorted(categories.items())),
            "category_imbalance_ratio": ratio,
            "category_imbalance_flagged": ratio is not None and ratio > IMBALANCE_FLAG,
        }
    }


def note_lines(stats: dict[str, Any]) -> list[str]:
    """Markdown lines for report.md's statistics."""
    annotations = stats.get("annotations")
    if not annotations:
        return []
    lines = [
        f"- unusual frames kept: {note} {count} (e.g. {', '.join(annotations['note_examples'][note])})"
        for note, count in annotations["notes"].items()
    ]
    ratio = annotations["category_imbalance_ratio"]
    if ratio is not None:
        flag = f" — **above {IMBALANCE_FLAG:g}:1**" if annotations["category_imbalance_flagged"] else ""
        lines.append(f"- object categories: {len(annotations['categories'])}, imbalance {ratio:.1f}:1{flag}")
    return lines
