"""Seeded, reproducible splits: random, stratified by label, group-aware, and k-fold.

Every strategy partitions items into parts with target weights; k-fold is K equal parts of which
fold k becomes `val` and the rest `train`. Group-aware splits keep every group (a video, a person,
a source image) inside one part: with `by="image"`, samples sharing any image form one group, so
LLaVA conversations about the same COCO image never straddle train and val. With `by="source"` nothing is
re-split: each sample goes to the split its source assigned (oxford_flowers102's setid.mat, a HF file's name).
`by="time"` orders each video's frames and cuts them with a gap (`data_shards.split_time`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")
STRATEGIES = ("random", "label", "group", "image", "source", "time")
DEFAULT_TIME_GAP = 8  # video frames dropped between consecutive splits by `by="time"`
SOURCE_SPLIT_ORDER = ("train", "validation", "valid", "val", "dev", "test")


class SplitError(ValueError):
    pass


@dataclass(frozen=True)
class SplitSpec:
    """`train=0.9,val=0.1` ratios, or k folds with one held out; `by` picks the strategy."""

    ratios: tuple[tuple[str, float], ...] = (("train", 1.0),)
    by: str = "random"
    folds: int | None = None
    fold: int | None = None
    gap: int = DEFAULT_TIME_GAP  # `by="time"` (data_shards.split_time)

    @classmethod
    def parse(
        cls,
        text: str,
        by: str = "random",
        folds: int | None = None,
        fold: int | None = None,
        gap: int = DEFAULT_TIME_GAP,
    ) -> SplitSpec:
        ratios = []
        for part in text.split(","):
            name, _, value = part.partition("=")
            try:
                ratios.append((name.strip(), float(value)))
            except ValueError:
                raise SplitError(f"--split part {part!r} is not NAME=FRACTION") from None
        spec = cls(tuple(ratios), by, folds, fold, gap)
        spec.check()
        return spec

    def check(self) -> None:
        if self.by not in STRATEGIES:
            raise SplitError(f"split strategy {self.by!r} is not one of {STRATEGIES}")
        if self.by == "source" and (self.folds is not None or self.ratios != SplitSpec.ratios):
            raise SplitError("--split-by source keeps the source's own splits: it takes no --split ratios or folds")
        if self.by == "time" and (self.folds is not None or self.gap < 0):
            raise SplitError(f"--split-by time takes --split ratios (no folds) and a --time-gap >= 0, got {self.gap}")
        if self.folds is not None:
            if self.folds < 2 or self.fold is None or not 0 <= self.fold < self.folds:
                raise SplitError(
                    f"k-fold needs folds >= 2 and 0 <= fold < folds, got folds={self.folds} fold={self.fold}"
                )
            return
        names = [name for name, _ in self.ratios]
        if len(set(names)) != len(names) or not all(name.isidentifier() for name in names):
            raise SplitError(f"split names must be distinct identifiers, got {names}")
        if any(value <= 0 for _, value in self.ratios) or abs(sum(v for _, v in self.ratios) - 1) > 1e-6:
            raise SplitError(f"split fractions must be positive and sum to 1, got {dict(self.ratios)}")


def assign_splits(
    labels: Sequence[str | None], groups: Sequence[str], spec: SplitSpec, seed: int, frames: Sequence[int | None] = ()
) -> list[str | None]:
    """The split name of every item, in input order; None for a frame a time split drops in a gap."""
    if spec.by == "time":
        from data_shards.split_time import temporal  # here, not at the top: it builds on this module's quotas

        parts = temporal(groups, frames, [value for _, value in spec.ratios], spec.gap)
        return [None if part is None else spec.ratios[part][0] for part in parts]
    if spec.folds is not None:
        parts = partition(labels, groups, [1.0] * spec.folds, spec.by, seed)
        return ["val" if part == spec.fold else "train" for part in parts]
    names = [name for name, _ in spec.ratios]
    parts = partition(labels, groups, [value for _, value in spec.ratios], spec.by, seed)
    return [names[part] for part in parts]


def partition(
    labels: Sequence[str | None], groups: Sequence[str], weights: list[float], by: str, seed: int
) -> list[int]:
    rng = np.random.default_rng(seed)
    if by == "label":
        return stratified(labels, weights, rng)
    if by in ("group", "image"):
        return grouped(groups, weights, rng)
    return cut(rng.permutation(len(labels)), weights, len(labels))


def quotas(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder rounding: integer counts that sum to `total`."""
    exact = np.asarray(weights) / sum(weights) * total
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts.tolist()


def cut(order: np.ndarray, weights: list[float], total: int) -> list[int]:
    parts = [0] * total
    start = 0
    for part, count in enumerate(quotas(len(order), weights)):
        for item in order[start : start + count]:
            parts[item] = part
        start += count
    return parts


def stratified(labels: Sequence[str | None], weights: list[float], rng: np.random.Generator) -> list[int]:
    if any(label is None for label in labels):
        raise SplitError("a stratified split needs a label on every sample (this source has none)")
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    parts = [0] * len(labels)
    for label in sorted(by_label):
        members = np.asarray(by_label[label])[rng.permutation(len(by_label[label]))]
        for local, part in enumerate(cut(np.arange(len(members)), weights, len(members))):
            parts[members[local]] = part
    return parts


def grouped(groups: Sequence[str], weights: list[float], rng: np.random.Generator) -> list[int]:
    """Whole groups, shuffled, each to the part furthest below its target."""
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    names = sorted(members)
    targets = np.asarray(weights) / sum(weights) * len(groups)
    filled = np.zeros(len(weights))
    parts = [0] * len(groups)
    for position in rng.permutation(len(names)):
        group = members[names[position]]
        part = int(np.argmax(targets - filled))
        filled[part] += len(group)
        for index in group:
            parts[index] = part
    return parts


def image_groups(image_hashes: Sequence[Sequence[str]], explicit: Sequence[str | None]) -> list[str]:
    """Connected components of samples that share an image (union-find), joined with explicit groups."""
    parent = list(range(len(image_hashes)))

    def find(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    first_owner: dict[str, int] = {}
    for index, hashes in enumerate(image_hashes):
        tokens = list(hashes) + ([f"group:{explicit[index]}"] if explicit[index] is not None else [])
        for token in tokens:
            owner = first_owner.setdefault(token, index)
            parent[find(index)] = find(owner)
    return [f"component{find(index)}" for index in range(len(image_hashes))]


def explicit_groups(groups: Sequence[str | None]) -> list[str]:
    """Group-aware split on the sources' own groups; a sample without one is its own group."""
    return [group if group is not None else f"sample{index}" for index, group in enumerate(groups)]


def source_splits(items: Sequence[T], splits: Sequence[str | None], origins: Sequence[str]) -> dict[str, list[T]]:
    """Items grouped by the split their source gave them, train/val/test first, then by name; every item needs one."""
    missing = [origin for split, origin in zip(splits, origins) if split is None]
    if missing:
        raise SplitError(
            f"--split-by source: {len(missing)} samples have no split from their source (first: {missing[0]})"
        )
    bad = sorted({split for split in splits if not str(split).isidentifier()})
    if bad:
        raise SplitError(f"--split-by source: split names must be identifiers (they name folders), got {bad[:5]}")
    rank = {name: position for position, name in enumerate(SOURCE_SPLIT_ORDER)}
    result: dict[str, list[T]] = {name: [] for name in sorted(set(splits), key=lambda n: (rank.get(n, len(rank)), n))}
    for item, split in zip(items, splits):
        result[split].append(item)
    return result
