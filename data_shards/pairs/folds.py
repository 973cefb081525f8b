"""K folds of images, stratified by score: equal-count score bins, each spread evenly over the folds.

Images are ranked by score (ties kept in name order) and cut into `bins` bins of equal count; inside
each bin the order is shuffled, and the bins, one after another, are dealt round-robin to the folds
(in a seeded fold order). So fold sizes differ by at most one, and so does each bin's count per fold.
"""

from __future__ import annotations

import numpy as np

from data_shards.pairs.errors import PairsError


def assign_folds(scores: np.ndarray, folds: int, bins: int, seed: int) -> np.ndarray:
    """The fold (0-based) of every image, in input order."""
    count = len(scores)
    if not 2 <= folds <= count:
        raise PairsError(f"--folds must be in 2..{count} (the number of images), got {folds}")
    if not 1 <= bins <= count:
        raise PairsError(f"--score-bins must be in 1..{count} (the number of images), got {bins}")
    rng = np.random.default_rng(seed)
    rank = np.empty(count, dtype=int)
    rank[np.argsort(scores, kind="stable")] = np.arange(count)
    score_bin = rank * bins // count
    dealing_order = np.lexsort((rng.random(count), score_bin))
    assignment = np.empty(count, dtype=int)
    assignment[dealing_order] = rng.permutation(folds)[np.arange(count) % folds]
    return assignment
