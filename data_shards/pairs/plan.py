"""Scores → folds → pairs, all decided before anything is written; then each fold's pair CSVs."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_shards.pairs.errors import PairsError
from data_shards.pairs.folds import assign_folds
from data_shards.pairs.sampling import Pairs, train_pairs, val_pairs
from data_shards.pairs.scores import ScoredImage


@dataclass(frozen=True)
class PairSettings:
    folds: int = 5
    seed: int = 42
    train_pairs: int = 45000
    margin: float = 0.2
    val_pairs: int | None = None
    score_bins: int = 10

    def __post_init__(self) -> None:
        if self.margin <= 0:
            raise PairsError(f"--similar-margin must be positive, got {self.margin}")
        if self.train_pairs < 1 or (self.val_pairs is not None and self.val_pairs < 1):
            raise PairsError(f"pair counts must be positive, got {self.train_pairs} and {self.val_pairs}")


@dataclass
class FoldPlan:
    """Fold `number` (from 0): image indices held out (val) and kept (train), with pairs of those indices."""

    number: int
    images: dict[str, np.ndarray]
    pairs: dict[str, Pairs]


def plan_folds(images: list[ScoredImage], settings: PairSettings) -> list[FoldPlan]:
    """Fold k's pairs draw from a generator seeded with (seed, k), so one fold reproduces on its own."""
    scores = np.asarray([image.score for image in images])
    assignment = assign_folds(scores, settings.folds, settings.score_bins, settings.seed)
    plans = []
    for fold in range(settings.folds):
        number, rng = fold, np.random.default_rng([settings.seed, fold])
        sides = {"train": np.flatnonzero(assignment != fold), "val": np.flatnonzero(assignment == fold)}
        train = train_pairs(scores[sides["train"]], settings.train_pairs, settings.margin, rng, f"fold {number} train")
        val = val_pairs(scores[sides["val"]], settings.val_pairs, settings.margin, rng, f"fold {number} val")
        pairs = {name: global_indices(p, sides[name]) for name, p in (("train", train), ("val", val))}
        plans.append(FoldPlan(number, sides, pairs))
    return plans


def global_indices(pairs: Pairs, members: np.ndarray) -> Pairs:
    return Pairs(members[pairs.first], members[pairs.second], pairs.labels)


def write_pairs_csv(path: Path, pairs: Pairs, images: list[ScoredImage]) -> None:
    """The `pairs` reader's columns; scores as Python writes floats, so they read back exactly."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["img1", "img2", "label", "score1", "score2"])
        for first, second, label in zip(pairs.first, pairs.second, pairs.labels):
            one, two = images[first], images[second]
            writer.writerow([one.name, two.name, label, one.score, two.score])
