"""Pairs of images with their labels: balanced training pairs, and all (or a sample of) validation pairs.

A pair (first, second) with scores s1, s2 is Similar when |s1 - s2| < margin (computed as
max < min + margin), else First when s1 > s2 (the first image scores higher), else Second.
Each unordered pair is drawn at most once and written in one order only: the trainer swaps on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_shards.pairs.errors import PairsError
from data_shards.sources.pairs import LABELS
from data_shards.split import quotas


@dataclass
class Pairs:
    """Image indices of each pair's first and second image, and the pair's label."""

    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray

    def counts(self) -> dict[str, int]:
        return {label: int(np.sum(self.labels == label)) for label in LABELS}


def pair_labels(score1: np.ndarray, score2: np.ndarray, margin: float) -> np.ndarray:
    similar = np.maximum(score1, score2) < np.minimum(score1, score2) + margin
    return np.where(similar, "Similar", np.where(score1 > score2, "First", "Second"))


def nth_pairs(counts: np.ndarray, first_partner: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row i owns `counts[i]` consecutive flat indices, pairing i with `first_partner[i]`, the next one, ..."""
    ends = np.cumsum(counts)
    rows = np.searchsorted(ends, flat, side="right")
    return rows, first_partner[rows] + flat - (ends[rows] - counts[rows])


def max_balanced(similar: int, other: int) -> int:
    """The most pairs whose quotas fit: N // 3 Similar and the rest First or Second."""
    return min(3 * similar + 2, 3 * other // 2)


def train_pairs(scores: np.ndarray, count: int, margin: float, rng: np.random.Generator, where: str) -> Pairs:
    """`count` distinct unordered pairs, a third of each label (First gets the first remainder, then Second).

    A pair far apart in score is First or Second depending only on its order, so both share one pool;
    a class that cannot reach its quota is an error naming what the images allow.
    """
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    size = len(ranked)
    bound = np.searchsorted(ranked, ranked + margin, side="left")  # first partner no longer Similar
    similar_counts, other_counts = bound - np.arange(size) - 1, size - bound
    num_first, num_second, num_similar = quotas(count, [1, 1, 1])
    similar, other = int(similar_counts.sum()), int(other_counts.sum())
    if num_similar > similar or num_first + num_second > other:
        raise PairsError(
            f"{where}: {count} balanced pairs need {num_similar} Similar and {num_first + num_second} First/Second "
            f"pairs, but its {size} images give {similar} Similar (|score difference| < {margin}) and {other} "
            f"others: lower --train-pairs to at most {max_balanced(similar, other)} or change --similar-margin"
        )
    low, high = nth_pairs(similar_counts, np.arange(size) + 1, rng.choice(similar, num_similar, replace=False))
    swap = rng.random(num_similar) < 0.5
    similar_first, similar_second = np.where(swap, high, low), np.where(swap, low, high)
    low, high = nth_pairs(other_counts, bound, rng.choice(other, num_first + num_second, replace=False))
    first = np.concatenate([high[:num_first], low[num_first:], similar_first])
    second = np.concatenate([low[:num_first], high[num_first:], similar_second])
    shuffle = rng.permutation(count)
    first, second = order[first[shuffle]], order[second[shuffle]]
    return Pairs(first, second, pair_labels(scores[first], scores[second], margin))


def val_pairs(scores: np.ndarray, count: int | None, margin: float, rng: np.random.Generator, where: str) -> Pairs:
    """Every unordered pair (`count` None), or a uniform sample of `count` of them, each in a random order."""
    size = len(scores)
    total = size * (size - 1) // 2
    if count is None:
        low, high = np.triu_indices(size, 1)
    elif count > total:
        raise PairsError(f"{where}: --val-pairs {count} is more than the {total} pairs of its {size} images")
    else:
        flat = np.sort(rng.choice(total, count, replace=False))
        low, high = nth_pairs(size - 1 - np.arange(size), np.arange(size) + 1, flat)
    swap = rng.random(len(low)) < 0.5
    first, second = np.where(swap, high, low), np.where(swap, low, high)
    return Pairs(first, second, pair_labels(scores[first], scores[second], margin))
