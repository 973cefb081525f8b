"""How many shard bytes an epoch transfers, computed from the deal: each node fetches every shard its ranks'
strips touch once into its cache (`data_shards.stream.cache`), so DataLoader workers do not multiply it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_shards.stream.deal import Deal
from data_shards.stream.order import epoch_order
from data_shards.stream.reader import CHUNK_ITEMS


@dataclass(frozen=True)
class TransferPlan:
    shard_bytes: int  # the split's size
    transferred: int  # what the nodes fetch in one epoch, with caches that hold their working set

    @property
    def ratio(self) -> float:
        return self.transferred / self.shard_bytes


def shards_touched(deal: Deal, order, rank: int) -> set[int]:
    touched: set[int] = set()
    for start in range(0, deal.per_rank, CHUNK_ITEMS * 16):
        items = np.arange(start, min(start + CHUNK_ITEMS * 16, deal.per_rank))
        touched.update(np.unique(order.items(deal.positions(rank, items))[0]).tolist())
    return touched


def plan_transfers(
    counts: list[int],
    sizes: list[int],
    world_size: int,
    ranks_per_node: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    block_shards: int = 8,
    remainder: str = "pad",
) -> TransferPlan:
    order = epoch_order(counts, seed, epoch, True, block_shards)
    deal = Deal.whole(len(order), world_size, remainder)
    transferred = 0
    for node_start in range(0, world_size, ranks_per_node):
        node: set[int] = set()
        for rank in range(node_start, min(node_start + ranks_per_node, world_size)):
            node |= shards_touched(deal, order, rank)
        transferred += sum(sizes[shard] for shard in node)
    return TransferPlan(sum(sizes), transferred)
