"""Bradley–Terry strengths from pairwise outcomes, and the correlations that compare them with true scores.

P(a beats b) = p_a / (p_a + p_b). An outcome is (item_a, item_b, "First" | "Second" | "Similar"): First
means a won, Second that b won, and Similar counts as half a win each way (the likelihood of the ties-as-
half-wins model, not a Davidson tie parameter: one fewer thing to fit, and the same ordering).

Regularisation: every item also plays `prior` virtual Similar comparisons against a fixed reference item of
log-strength 0. That keeps an item that always wins (or loses) finite, makes the maximum unique, and puts
components of a disconnected comparison graph on one scale: each is pulled toward the reference, though
nothing but the prior relates them. The maximum is found by the MM algorithm (Hunter 2004, "MM algorithms
for generalized Bradley–Terry models"): p_i ← W_i / Σ_j n_ij / (p_i + p_j), with the reference among the j.
Items are indexed in sorted order and counts are sums of halves, so the fit does not depend on the order
of the outcomes, nor on which of a pair is listed first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WIN = {"First": 1.0, "Second": 0.0, "Similar": 0.5}


@dataclass
class Strengths:
    """Log-strengths (natural log of p) by item, and how many comparisons each item took part in."""

    items: list[str]
    log_strengths: np.ndarray
    comparisons: np.ndarray

    def by_item(self) -> dict[str, float]:
        return dict(zip(self.items, self.log_strengths.tolist()))


@dataclass
class Tally:
    """Sufficient statistics: wins per item (halves for ties) and games per unordered pair (i < j)."""

    items: list[str]
    wins: np.ndarray
    first: np.ndarray
    second: np.ndarray
    games: np.ndarray


def tally(outcomes: Iterable[tuple[str, str, str]]) -> Tally:
    outcomes = list(outcomes)
    for a, b, result in outcomes:
        if result not in WIN:
            raise ValueError(f"outcome {result!r} of ({a!r}, {b!r}) is not one of {sorted(WIN)}")
        if a == b:
            raise ValueError(f"item {a!r} is compared with itself")
    items = sorted({item for a, b, _ in outcomes for item in (a, b)})
    index = {item: number for number, item in enumerate(items)}
    wins = np.zeros(len(items))
    pairs: dict[tuple[int, int], int] = {}
    for a, b, result in outcomes:
        i, j = index[a], index[b]
        wins[i] += WIN[result]
        wins[j] += 1.0 - WIN[result]
        pairs[min(i, j), max(i, j)] = pairs.get((min(i, j), max(i, j)), 0) + 1
    keys = sorted(pairs)
    first = np.array([i for i, _ in keys], dtype=np.int64)
    second = np.array([j for _, j in keys], dtype=np.int64)
    return Tally(items, wins, first, second, np.array([pairs[k] for k in keys], dtype=float))


def fit(
    outcomes: Iterable[tuple[str, str, str]], prior: float = 1.0, tol: float = 1e-10, max_iter: int = 100_000
) -> Strengths:
    """Maximum a posteriori strengths; stops when no log-strength moves by more than `tol`."""
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (it keeps unbeaten items finite), got {prior}")
    counts = tally(outcomes)
    n = len(counts.items)
    wins = counts.wins + prior / 2
    played = np.bincount(counts.first, counts.games, n) + np.bincount(counts.second, counts.games, n)
    p = np.ones(n)
    for _ in range(max_iter):
        per_game = counts.games / (p[counts.first] + p[counts.second])
        denominator = np.bincount(counts.first, per_game, n) + np.bincount(counts.second, per_game, n)
        updated = wins / (denominator + prior / (p + 1.0))
        step = np.abs(np.log(updated) - np.log(p)).max(initial=0.0)
        p = updated
        if step < tol:
            break
    else:
        raise RuntimeError(f"Bradley–Terry fit did not converge in {max_iter} iterations (last step {step:.3g})")
    return Strengths(counts.items, np.log(p), played.astype(int))


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    _, groups = np.unique(values, return_inverse=True)
    sums = np.bincount(groups, ranked)
    return sums[groups] / np.bincount(groups)[groups]


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either side is constant (the correlation is undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"pearson needs two 1-D sequences of one length >= 2, got shapes {x.shape} and {y.shape}")
    dx, dy = x - x.mean(), y - y.mean()
    scale = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / scale) if scale > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks."""
    return pearson(ranks(x), ranks(y))
