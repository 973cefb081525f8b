"""Seeded, reproducible splits: random, stratified by label, group-aware, and k-fold.

Every strategy partitions items into parts with target weights; k-fold is K equal parts of which
fold k becomes `val` and the rest `train`. Group-aware splits keep every group (a video, a person,
a source image) inside one part: with `by="image"`, samples sharing any image form one group, so
LLaVA conversations about the same COCO image never straddle train and val.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("random", "label", "group", "image")


class SplitError(ValueError):
    pass


@dataclass(frozen=True)
class SplitSpec:
    """`train=0.9,val=0.1` ratios, or k folds with one held out; `by` picks the strategy."""

    ratios: tuple[tuple[str, float], ...] = (("train", 1.0),)
    by: str = "random"
    folds: int | None = None
    fold: int | None = None

    @classmethod
    def parse(cls, text: str, by: str = "random", folds: int | None = None, fold: int | None = None) -> SplitSpec:
        ratios = []
        for part in text.split(","):
            name, _, value = part.partition("=")
            try:
                ratios.append((name.strip(), float(value)))
            except ValueError:
                raise SplitError(f"--split part {part!r} is not NAME=FRACTION") from None
        spec = cls(tuple(ratios), by, folds, fold)
        spec.check()
        return spec

    def check(self) -> None:
        if self.by not in STRATEGIES:
            raise SplitError(f"split strategy {self.by!r} is not one of {STRATEGIES}")
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


def assign_splits(labels: Sequence[str | None], groups: Sequence[str], spec: SplitSpec, seed: int) -> list[str]:
    """The split name of every item, in input order."""
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
