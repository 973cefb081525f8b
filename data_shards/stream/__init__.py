"""Streaming built (or indexed) shards to every rank: equal counts by construction, exact resume, elastic
resume at another world size, remote shards transferred about once per epoch, corrupt-shard policy."""

from data_shards.stream.config import StreamConfig
from data_shards.stream.dataset import ShardStream
from data_shards.stream.loader import ShardLoader
from data_shards.stream.reader import Skipped
from data_shards.stream.shards import local_shard_problem, resolve_shards

__all__ = ["ShardLoader", "ShardStream", "Skipped", "StreamConfig", "local_shard_problem", "resolve_shards"]
