"""How a split is streamed: batch size, order, padding, corrupt-shard policy, the remote-shard cache."""

from __future__ import annotations

from dataclasses import dataclass

from data_shards.stream.deal import samples_per_rank

POLICIES = ("skip", "fail")


@dataclass
class StreamConfig:
    batch_size: int = 1
    accumulation: int = 1  # micro-batches per optimizer step (stream.deal: world size × this × width readers)
    width: int = 1  # readers each micro-batch draws from (a divisor of batch_size)
    seed: int = 0
    shuffle: bool = True
    block_shards: int = 8
    remainder: str = "pad"
    decode: bool = True
    on_corrupt: str = "skip"
    sample_fraction: float = 1.0  # a seeded subset, the same every epoch and on every rank (stream.order)
    cache_dir: str = ""  # node-local copies of remote shards; "" is $SHARDTUNE_CACHE or the temp dir's
    cache_gb: float = 64.0  # least recently used copies are dropped beyond this

    def __post_init__(self) -> None:
        if min(self.batch_size, self.block_shards, self.accumulation) < 1:
            raise ValueError(
                f"batch_size, block_shards and accumulation must be >= 1, got {self.batch_size}, "
                f"{self.block_shards}, {self.accumulation}"
            )
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if self.on_corrupt not in POLICIES:
            raise ValueError(f"on_corrupt must be one of {POLICIES}, got {self.on_corrupt!r}")
        if self.width < 1 or self.batch_size % self.width:
            raise ValueError(f"width must divide batch_size {self.batch_size}, got {self.width}")
        if self.cache_gb <= 0:
            raise ValueError(f"cache_gb must be > 0, got {self.cache_gb}")
        samples_per_rank(0, 1, self.remainder)  # checks it

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_gb * 2**30)
