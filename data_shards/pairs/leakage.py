"""The fold guarantee: no image on both sides of a fold, and every image in exactly one validation fold.

An image is identified by its bytes, so a byte-identical copy under another name counts as the same image.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from data_shards.pairs.errors import MAX_LISTED, raise_if_any

Sides = dict[str, set[str]]


def leaked(sides: Sides, hashes: dict[str, str]) -> list[str]:
    """The images on both sides of one fold, each as its names joined by ' = ', sorted."""
    by_hash: dict[str, set[str]] = {}
    for names in sides.values():
        for name in names:
            by_hash.setdefault(hashes[name], set()).add(name)
    train = {hashes[name] for name in sides["train"]}
    val = {hashes[name] for name in sides["val"]}
    return sorted(" = ".join(sorted(by_hash[digest])) for digest in train & val)


def refuse_leakage(folds: dict[int, Sides], hashes: dict[str, str]) -> None:
    problems = []
    for number, sides in folds.items():
        images = leaked(sides, hashes)
        if images:
            shown = ", ".join(images[:MAX_LISTED]) + (", ..." if len(images) > MAX_LISTED else "")
            problems.append(f"fold {number}: {len(images)} images on both the train and the val side: {shown}")
    raise_if_any("leakage between train and val (pass --allow-leakage to shard anyway)", problems)


def guarantee(folds: dict[int, Sides], hashes: dict[str, str]) -> dict[str, Any]:
    """What folds.json states, checked on the folds as written."""
    leaks = {number: leaked(sides, hashes) for number, sides in folds.items()}
    everything = set().union(*(names for sides in folds.values() for names in sides.values()))
    val_folds = Counter(name for sides in folds.values() for name in sides["val"])
    in_none = sorted(everything - set(val_folds))
    in_several = sorted(name for name, count in val_folds.items() if count > 1)
    return {
        "train_val_disjoint": not any(leaks.values()),
        "leaked_images": {f"fold{number}": len(images) for number, images in leaks.items()},
        "leaked_examples": {f"fold{n}": images[:MAX_LISTED] for n, images in leaks.items() if images},
        "every_image_in_exactly_one_val_fold": not in_none and not in_several,
        "images": len(everything),
        "in_no_val_fold": {"count": len(in_none), "examples": in_none[:MAX_LISTED]},
        "in_several_val_folds": {"count": len(in_several), "examples": in_several[:MAX_LISTED]},
    }
