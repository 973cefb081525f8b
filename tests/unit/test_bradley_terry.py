"""Bradley–Terry fits against hand-solved fixed points, simulated orderings, ties and disconnected graphs; the
correlations against hand-computed values."""

import math
import random

import numpy as np
import pytest

from trainer.evaluate.bradley_terry import fit, pearson, ranks, spearman

LOG2 = math.log(2)


def test_one_win_solves_the_hand_derived_fixed_point():
    """Two items, a beats b once; the problem is symmetric under p → 1/p with a ↔ b, so p_b = 1/p_a. With prior
    1.2 (0.6 virtual wins and losses each) the stationarity of a is 1.6/x − x/(x² + 1) − 1.2/(x + 1) = 0,
    solved by x = 2; with the default prior 1 it is x³ − x² − x − 3 = 0."""
    assert fit([("a", "b", "First")], prior=1.2).by_item() == pytest.approx({"a": LOG2, "b": -LOG2}, abs=1e-8)
    strengths = fit([("a", "b", "First")]).by_item()
    x = math.exp(strengths["a"])
    assert x**3 - x**2 - x - 3 == pytest.approx(0, abs=1e-8)
    assert strengths["b"] == pytest.approx(-strengths["a"], abs=1e-8)


def test_three_transitive_wins_solve_the_hand_derived_fixed_point():
    """a > b, b > c, a > c: by the same symmetry p_b = 1 and p_c = 1/p_a; with prior 3.2 a's stationarity
    (3.6/x − 1/(x + 1) − x/(x² + 1) − 3.2/(x + 1) = 0) holds at x = 2."""
    outcomes = [("a", "b", "First"), ("b", "c", "First"), ("a", "c", "First")]
    assert fit(outcomes, prior=3.2).by_item() == pytest.approx({"a": LOG2, "b": 0.0, "c": -LOG2}, abs=1e-8)


def test_a_cycle_and_ties_leave_every_item_at_the_reference():
    cycle = [("a", "b", "First"), ("b", "c", "First"), ("c", "a", "First")]
    assert fit(cycle).by_item() == pytest.approx({"a": 0, "b": 0, "c": 0}, abs=1e-9)
    assert fit([("a", "b", "Similar"), ("b", "c", "Similar")]).by_item() == pytest.approx(dict.fromkeys("abc", 0))


def test_similar_counts_as_half_a_win_each_way():
    """A Similar is the same evidence as one First and one Second, at half the weight (the prior halved too)."""
    tied = fit([("a", "b", "First"), ("a", "b", "Similar")], prior=1.0).by_item()
    split = fit([("a", "b", "First"), ("a", "b", "First"), ("a", "b", "First"), ("a", "b", "Second")], prior=2.0)
    assert tied == pytest.approx(split.by_item(), abs=1e-8)


def simulated(true: dict[str, float], games: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    names, outcomes = sorted(true), []
    for _ in range(games):
        a, b = rng.sample(names, 2)
        gap = true[a] - true[b]
        draw = rng.random()
        outcomes.append(
            (a, b, "Similar" if abs(gap) < 0.1 else "First" if draw < 1 / (1 + math.exp(-gap)) else "Second")
        )
    return outcomes


def test_strengths_recover_a_simulated_ordering():
    true = {f"item{n}": 0.5 * n for n in range(8)}
    strengths = fit(simulated(true, 4000, seed=0))
    assert strengths.items == sorted(true)
    assert strengths.log_strengths.argsort().tolist() == list(range(8))
    assert spearman(strengths.log_strengths, list(true.values())) == 1.0
    assert pearson(strengths.log_strengths, list(true.values())) > 0.99
    assert strengths.comparisons.sum() == 2 * 4000


def test_the_fit_ignores_the_order_of_outcomes_and_of_each_pair():
    outcomes = simulated({name: float(n) for n, name in enumerate("pqrstu")}, 300, seed=1)
    mirrored = [(b, a, {"First": "Second", "Second": "First"}.get(result, result)) for a, b, result in outcomes]
    shuffled = mirrored[:]
    random.Random(2).shuffle(shuffled)
    reference = fit(outcomes)
    for other in (fit(shuffled), fit(outcomes[::-1])):
        assert other.items == reference.items
        assert np.array_equal(other.log_strengths, reference.log_strengths)
        assert np.array_equal(other.comparisons, reference.comparisons)


def test_a_disconnected_graph_fits_each_component_and_keeps_unbeaten_items_finite():
    outcomes = [("a", "b", "First")] * 5 + [("c", "d", "First")] * 5 + [("e", "f", "Similar")]
    strengths = fit(outcomes).by_item()
    assert all(math.isfinite(value) for value in strengths.values())
    assert strengths["a"] == pytest.approx(strengths["c"]) and strengths["b"] == pytest.approx(strengths["d"])
    assert strengths["a"] > 0 > strengths["b"]
    assert strengths["e"] == pytest.approx(0) and strengths["f"] == pytest.approx(0)
    alone = fit([("a", "b", "First")] * 5).by_item()
    assert alone == pytest.approx({"a": strengths["a"], "b": strengths["b"]})


def test_bad_outcomes_and_priors_are_refused():
    with pytest.raises(ValueError, match="'Better' of \\('a', 'b'\\) is not one of"):
        fit([("a", "b", "Better")])
    with pytest.raises(ValueError, match="'a' is compared with itself"):
        fit([("a", "a", "First")])
    with pytest.raises(ValueError, match="prior must be > 0"):
        fit([("a", "b", "First")], prior=0)
    assert fit([]).items == []


def test_correlations_match_hand_computed_values():
    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert ranks([5, 5, 5]).tolist() == [2.0, 2.0, 2.0]
    # deviations (−1, 0, 1) and (−2, 1, 1): Σdxdy = 3, Σdx² = 2, Σdy² = 6
    assert pearson([1, 2, 3], [1, 4, 4]) == pytest.approx(3 / math.sqrt(2 * 6))
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    # ranks (1, 2, 3, 4) and (1, 3, 2, 4): 1 − 6 Σd² / (n(n² − 1)) = 1 − 6·2/60
    assert spearman([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="length >= 2"):
        pearson([1], [2])
    with pytest.raises(ValueError, match="shapes"):
        spearman([1, 2], [1, 2, 3])
