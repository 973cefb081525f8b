"""The deal of an epoch's rest to ranks across world-size changes (2 → 1 → 2 → 4 …): what every rank reads,
over the whole chain, is each position of the epoch exactly once, plus only the padding that equal counts need."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from data_shards.stream.deal import Deal, Schedule, merged, samples_per_rank


def read_chain(total: int, worlds: list[int], fractions: list[float], remainder: str) -> tuple[Counter, int]:
    """Each stage reads `fraction` of its strips on `world` ranks, then the next deals what is left."""
    deal, reads, padding = Deal.whole(total, worlds[0], remainder), Counter(), 0
    for world, fraction in zip(worlds, fractions):
        deal = Deal(deal.segment, world, remainder)
        consumed = int(deal.per_rank * fraction)
        for rank in range(world):
            reads.update(deal.positions(rank, np.arange(consumed)).tolist())
        padding += max(0, world * deal.per_rank - deal.total) if fraction == 1 else 0
        deal = Deal(deal.rest([consumed] * world), world, remainder)
    return reads, padding


@pytest.mark.parametrize("total", [97, 100, 1])
def test_a_chain_of_world_sizes_reads_every_position_once(total):
    reads, padding = read_chain(total, [2, 1, 2, 4, 3], [0.3, 0.5, 0.25, 0.6, 1.0], "pad")
    assert set(reads) == set(range(total))
    assert sum(reads.values()) == total + padding and padding < 3


def test_drop_leaves_out_only_the_last_remainder():
    reads, _ = read_chain(101, [2, 4], [0.5, 1.0], "drop")
    assert max(reads.values()) == 1 and 101 - len(reads) < 4


def test_resume_at_the_same_world_size_keeps_the_strips():
    deal = Deal.whole(30, 3, "pad")
    assert [deal.positions(rank, np.arange(10)).tolist() for rank in range(3)] == [
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]
    assert deal.rest([4, 4, 4]) == ((4, 10), (14, 20), (24, 30))
    after = Deal(deal.rest([4, 4, 4]), 3, "pad")
    assert [after.positions(rank, np.arange(6)).tolist() for rank in range(3)] == [
        deal.positions(rank, np.arange(4, 10)).tolist() for rank in range(3)
    ]


def test_pad_wraps_the_last_strip_to_the_start():
    deal = Deal.whole(10, 4, "pad")
    assert deal.per_rank == 3 and deal.positions(3, np.arange(3)).tolist() == [9, 0, 1]
    assert deal.rest([3] * 4) == ()  # the padding is not owed to anyone


def test_merged_and_counts():
    assert merged([(5, 7), (0, 2), (2, 4), (9, 9)]) == ((0, 4), (5, 7))
    assert samples_per_rank(10, 4, "pad") == 3 and samples_per_rank(10, 4, "drop") == 2
    with pytest.raises(ValueError, match="remainder"):
        samples_per_rank(10, 4, "wrap")


def test_a_step_takes_one_batch_of_every_reader_however_ranks_and_micro_steps_split_them():
    deal = Deal.whole(22, 4, "pad")  # strips of 6: 0-5, 6-11, 12-17, 18-21 + 0, 1
    step_sets = {}
    for world, accumulation in [(4, 1), (2, 2), (1, 4)]:
        ranks = [Schedule(deal, rank, accumulation, batch_size=4) for rank in range(world)]
        assert {schedule.total_batches for schedule in ranks} == {2 * accumulation}
        steps = []
        for step in range(2):
            micro = range(step * accumulation, (step + 1) * accumulation)
            steps.append(sorted(p for s in ranks for b in micro for p in s.batch_positions(b).tolist()))
        step_sets[(world, accumulation)] = steps
    assert step_sets[(4, 1)] == step_sets[(2, 2)] == step_sets[(1, 4)]
    assert step_sets[(4, 1)][1] == sorted([4, 5, 10, 11, 16, 17, 0, 1])  # the short last batches, padding included
    two_by_two = Schedule(deal, 1, 2, batch_size=4)
    assert two_by_two.batch_positions(1).tolist() == [18, 19, 20, 21]  # rank 1, micro-batch 1: reader 3's batch 0
    assert two_by_two.consumed(3) == [6, 4, 6, 4] and two_by_two.items_left(3) == 2


def test_a_wider_micro_batch_draws_on_several_readers_as_accumulation_would():
    deal = Deal.whole(40, 2, "pad")
    accumulated = Schedule(deal, 0, accumulation=2, batch_size=4)
    wide = Schedule(deal, 0, accumulation=1, batch_size=8, width=2)
    for step in range(5):
        pair = [accumulated.batch_positions(2 * step + m).tolist() for m in range(2)]
        assert wide.batch_positions(step).tolist() == pair[0] + pair[1]
    assert wide.consumed(3) == accumulated.consumed(6) == [12, 12]
    assert wide.items_left(3) == accumulated.items_left(6) == 16
