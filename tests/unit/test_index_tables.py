"""The index stays small (issue 16, part 2): a per-shard summary, per-sample tables beside it read lazily, and
an epoch order drawn a block at a time. Indexes written before keep reading."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_split

from data_shards.index import INDEX_NAME, KEYS_NAME, OFFSETS_NAME, shard_keys
from data_shards.sample import Sample, Turn
from data_shards.stream import ShardStream, StreamConfig
from data_shards.stream.order import KEPT_BLOCKS, BlockOrder
from data_shards.write import shard_name, write_index, write_shard

SIZES = [7, 3, 11, 1, 6]


@pytest.fixture
def split(tmp_path) -> Path:
    folder = tmp_path / "train"
    folder.mkdir()
    infos, first = [], 0
    for number, count in enumerate(SIZES):
        samples = [
            Sample(key=f"q{n}", images=[], turns=[Turn("user", f"q {n}"), Turn("assistant", "a")])
            for n in range(first, first + count)
        ]
        infos.append(write_shard(folder / shard_name(number), samples, first))
        first += count
    write_index(folder, "train", infos, {"source": {"format": "test", "fingerprint": "tables"}})
    return folder


def keys_read(folder: Path, **config) -> list[str]:
    stream = ShardStream(
        folder, config=StreamConfig(seed=2, block_shards=2, decode=False, **config), rank=1, world_size=2
    )
    return [sample.key for sample in stream]


def test_the_summary_lists_shards_only_and_the_tables_hold_every_sample(split):
    index = json.loads((split / INDEX_NAME).read_text())
    assert all(set(shard) == {"name", "samples", "bytes", "sha256"} for shard in index["shards"])
    offsets = np.load(split / OFFSETS_NAME)
    assert len(offsets) == sum(SIZES) + len(SIZES) and offsets.dtype == np.int64
    assert len((split / KEYS_NAME).read_text().splitlines()) == len(SIZES)
    assert [len(keys) for keys in shard_keys(split).values()] == SIZES
    first_of_shard_2 = sum(SIZES[:2]) + 2  # rows: shard 0 has 7 + 1, shard 1 has 3 + 1
    assert (
        offsets[first_of_shard_2] == 0 and offsets[first_of_shard_2 + SIZES[2]] < (split / shard_name(2)).stat().st_size
    )


def test_an_index_written_before_the_tables_reads_the_same(split, tmp_path):
    expected = keys_read(split)
    index = json.loads((split / INDEX_NAME).read_text())
    offsets = np.load(split / OFFSETS_NAME).tolist()
    row = 0
    for shard, keys in zip(index["shards"], shard_keys(split).values()):
        shard["offsets"], shard["keys"] = offsets[row : row + shard["samples"] + 1], keys
        row += shard["samples"] + 1
    del index["tables"]
    (split / INDEX_NAME).write_text(json.dumps(index))
    (split / OFFSETS_NAME).unlink()
    (split / KEYS_NAME).unlink()
    assert keys_read(split) == expected
    assert [len(keys) for keys in shard_keys(split).values()] == SIZES


def test_a_table_that_does_not_match_the_summary_is_named(split):
    np.save(split / OFFSETS_NAME, np.arange(5, dtype=np.int64))
    with pytest.raises(ValueError, match=r"5 offsets, the index's shards need 33"):
        keys_read(split)


def test_the_block_order_equals_the_whole_order_and_keeps_a_few_blocks():
    counts = [5, 0, 9, 3, 8, 1, 4, 7, 2, 6] * 3
    order = BlockOrder(counts, seed=4, epoch=1, shuffle=True, block_shards=3)
    whole = order.items(np.arange(len(order)))
    assert len(order) == sum(counts)
    pairs = set(zip(whole[0].tolist(), whole[1].tolist()))
    assert pairs == {(shard, sample) for shard, count in enumerate(counts) for sample in range(count)}
    fresh = BlockOrder(counts, seed=4, epoch=1, shuffle=True, block_shards=3)
    positions = np.random.default_rng(0).permutation(len(order))
    for chunk in np.array_split(positions, 20):
        got = fresh.items(chunk)
        assert all(np.array_equal(g, w[chunk]) for g, w in zip(got, whole))
        assert len(fresh.kept) <= KEPT_BLOCKS


def test_a_rank_of_a_two_million_sample_split_at_half_holds_a_few_blocks_not_the_epoch(tmp_path):
    stream = ShardStream(
        synthetic_split(tmp_path / "big", 1000, 2000, "big"),
        config=StreamConfig(batch_size=8, seed=2, sample_fraction=0.5),
        rank=3,
        world_size=64,
    )
    schedule = stream.schedule()
    positions = np.concatenate([schedule.batch_positions(b) for b in range(512)])
    tracemalloc.start()
    shard, sample, _ = stream.order().items(positions)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8e6  # 3.0 MB; the whole order, drawn at once as before, peaked at 82 MB
    assert stream.epoch_samples == 1_000_000 and len(set(zip(shard.tolist(), sample.tolist()))) == len(positions)
