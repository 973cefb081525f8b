"""The shard stream: equal per-rank counts, worker-independent order, exact (elastic) resume,
corrupt-shard policy, pipe: URLs, brace patterns and decoding, on shards written by the real writer.

Every sample n is an 8x8 solid JPEG and an 8x8 solid palette PNG of colour(n), keyed `s{n:03d}`,
so what comes out of the loader can be traced back to what was written.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_shards.index import INDEX_NAME, load_index, shard_keys
from data_shards.sample import ImageData, Sample, Turn
from data_shards.stream import ShardLoader, ShardStream, Skipped, StreamConfig
from data_shards.tario import CorruptShardError
from data_shards.write import shard_name, write_index, write_shard

EVEN_SIZES = (7, 3, 11, 1, 6)  # 28 samples: divisible by 1, 2, 4, 7 (not 3)
ODD_SIZES = (7, 3, 11, 1, 5)  # 27 samples: divisible by 1, 3 (not 2)
JPEG_TOLERANCE = 4

multiprocess = pytest.mark.multiprocess


def workers_param(*counts):
    """num_workers values; those that start DataLoader workers carry the multiprocess mark."""
    many = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # > CPUs on small CI
    return [
        pytest.param(n, marks=[multiprocess, many], id=f"workers{n}") if n else pytest.param(0, id="workers0")
        for n in counts
    ]


# ----------------------------------------------------------------------------- building shards


def colour(n: int) -> tuple[int, int, int]:
    return (9 * n) % 256, (255 - 9 * n) % 256, (128 + 70 * n) % 256


def encoded(n: int, fmt: str) -> bytes:
    image = Image.new("RGB", (8, 8), colour(n))
    buffer = io.BytesIO()
    if fmt == "png":
        image.convert("P", palette=Image.ADAPTIVE).save(buffer, "PNG")  # decode() must convert to RGB
    else:
        image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_sample(n: int) -> Sample:
    return Sample(
        key=f"s{n:03d}",
        images=[ImageData(encoded(n, "jpeg"), "jpeg"), ImageData(encoded(n, "png"), "png")],
        turns=[Turn("user", "<image>\n<image>\nWhich colour is this?"), Turn("assistant", f"colour {n}")],
        label=str(n % 3),
        source="test",
    )


def number(key: str) -> int:
    return int(key[1:])


@dataclass
class Split:
    path: Path
    index: dict

    @property
    def keys(self) -> list[str]:
        """Every key in natural (written) order."""
        return [key for keys in self.shard_keys.values() for key in keys]

    @property
    def shard_keys(self) -> dict[str, list[str]]:
        return shard_keys(self.path)

    def plan_keys(self, stream: ShardStream) -> list[str]:
        shard_keys = self.shard_keys
        return [shard_keys[name][i] for name, i in stream.plan()]


def write_split(folder: Path, sizes, fingerprint: str) -> Split:
    folder.mkdir(parents=True)
    infos, first = [], 0
    for shard_number, count in enumerate(sizes):
        samples = [make_sample(n) for n in range(first, first + count)]
        infos.append(write_shard(folder / shard_name(shard_number), samples, first))
        first += count
    write_index(folder, "train", infos, {"seed": 0, "source": {"format": "test", "fingerprint": fingerprint}})
    return Split(folder, load_index(folder / INDEX_NAME))


@pytest.fixture(scope="module")
def even(tmp_path_factory) -> Split:
    return write_split(tmp_path_factory.mktemp("even") / "train", EVEN_SIZES, "even-fingerprint")


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Split:
    return write_split(tmp_path_factory.mktemp("odd") / "train", ODD_SIZES, "odd-fingerprint")


@pytest.fixture
def damaged(even, tmp_path) -> Split:
    """A private copy of the even split, to corrupt."""
    folder = tmp_path / "train"
    shutil.copytree(even.path, folder)
    return Split(folder, load_index(folder / INDEX_NAME))


def member_offsets(shard: Path, member: str) -> tuple[int, int]:
    """(header offset, data offset) of one member of a tar."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
        return info.offset, info.offset_data


def overwrite(path: Path, offset: int, data: bytes) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    assert path.stat().st_size == size


# ----------------------------------------------------------------------------- reading


def open_stream(source, rank=0, world=1, index=None, **config) -> ShardStream:
    return ShardStream(source, index=index, config=StreamConfig(**config), rank=rank, world_size=world)


def open_loader(source, rank=0, world=1, workers=0, index=None, **config) -> ShardLoader:
    return ShardLoader(open_stream(source, rank, world, index, **config), num_workers=workers)


def read_batches(loader: ShardLoader) -> list[list[str]]:
    return [[sample.key for sample in batch] for batch in loader]


def flat(batches: list[list[str]]) -> list[str]:
    return [key for batch in batches for key in batch]


def batched(keys: list[str], size: int) -> list[list[str]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def take(loader: ShardLoader, batches: int) -> list[list[str]]:
    """Consume the first `batches` batches of the loader, then stop it (workers shut down)."""
    iterator = iter(loader)
    try:
        return [[sample.key for sample in next(iterator)] for _ in range(batches)]
    finally:
        iterator.close()


def read_ranks(split: Split, world: int, workers: int, **config) -> list[list[list[str]]]:
    """Every rank's batches (as keys) for one epoch; also checks each loader's own len()."""
    out = []
    for rank in range(world):
        loader = open_loader(split.path, rank, world, workers, **config)
        promised_batches, promised_samples = len(loader), len(loader.stream)
        batches = read_batches(loader)
        assert (len(batches), len(flat(batches))) == (promised_batches, promised_samples)
        assert len(loader) == 0  # the epoch is done
        out.append(batches)
    return out


# ----------------------------------------------------------------------------- 1. coverage and equal counts


@pytest.mark.parametrize("remainder", ["pad", "drop"])
@pytest.mark.parametrize(
    "world, workers, dataset",
    [
        pytest.param(2, 2, "even", marks=multiprocess, id="2ranks-2workers-28"),
        pytest.param(3, 2, "odd", marks=multiprocess, id="3ranks-2workers-27"),
        pytest.param(1, 0, "even", id="1rank-0workers-28"),
        pytest.param(1, 0, "odd", id="1rank-0workers-27"),
    ],
)
def test_divisible_total_reads_every_sample_exactly_once(request, world, workers, dataset, remainder):
    split = request.getfixturevalue(dataset)
    assert len(split.keys) % world == 0
    ranks = read_ranks(split, world, workers, batch_size=3, seed=1, block_shards=2, remainder=remainder)
    per_rank = len(split.keys) // world
    assert [len(flat(batches)) for batches in ranks] == [per_rank] * world
    assert [len(batches) for batches in ranks] == [-(-per_rank // 3)] * world
    assert Counter(key for batches in ranks for key in flat(batches)) == Counter(split.keys)


@pytest.mark.parametrize(
    "world, workers, dataset",
    [
        pytest.param(2, 2, "odd", marks=multiprocess, id="2ranks-2workers-27"),
        pytest.param(3, 2, "even", marks=multiprocess, id="3ranks-2workers-28"),
    ],
)
def test_indivisible_total_pad_gives_equal_counts_and_pads_minimally(request, world, workers, dataset):
    split = request.getfixturevalue(dataset)
    total = len(split.keys)
    assert total % world != 0
    ranks = read_ranks(split, world, workers, batch_size=4, seed=2, remainder="pad")
    per_rank = -(-total // world)
    assert [len(flat(batches)) for batches in ranks] == [per_rank] * world
    assert len({len(batches) for batches in ranks}) == 1
    counts = Counter(key for batches in ranks for key in flat(batches))
    assert set(counts) == set(split.keys)  # every sample at least once
    padding = per_rank * world - total
    assert 0 < padding < world
    assert sum(count - 1 for count in counts.values()) == padding  # only as many repeats as needed
    assert max(counts.values()) == 2


@pytest.mark.parametrize(
    "world, workers, dataset",
    [
        pytest.param(2, 2, "odd", marks=multiprocess, id="2ranks-2workers-27"),
        pytest.param(3, 2, "even", marks=multiprocess, id="3ranks-2workers-28"),
    ],
)
def test_indivisible_total_drop_gives_equal_counts_without_repeats(request, world, workers, dataset):
    split = request.getfixturevalue(dataset)
    total = len(split.keys)
    ranks = read_ranks(split, world, workers, batch_size=4, seed=2, remainder="drop")
    per_rank = total // world
    assert [len(flat(batches)) for batches in ranks] == [per_rank] * world
    assert len({len(batches) for batches in ranks}) == 1
    counts = Counter(key for batches in ranks for key in flat(batches))
    assert max(counts.values()) == 1
    assert len(counts) == per_rank * world == total - total % world
    assert set(counts) <= set(split.keys)


def test_invalid_remainder_is_refused():
    with pytest.raises(ValueError, match="remainder"):
        StreamConfig(remainder="wrap")


# ----------------------------------------------------------------------------- 2. order

# The even split's global order (world size 1, epoch 0 unless named) for a few seeds, written out once and checked
# by hand against data_shards.stream.order: the shards (s000-006, s007-009, s010-020, s021, s022-027) are shuffled,
# cut into blocks of `block_shards` ("|" below), and each block's samples are shuffled; every block holds exactly
# the samples of its shards, and every sample comes once.
SEED11 = "24 25 8 27 22 23 9 26 7 | 13 11 15 18 10 21 16 20 17 14 19 12 | 4 3 1 5 2 0 6"  # shards 1 4 | 2 3 | 0
SEED4 = "18 10 11 27 26 12 19 17 20 24 16 14 13 23 15 22 25 | 1 9 2 4 0 3 5 6 8 7 | 21"  # shards 2 4 | 0 1 | 3
SEED7 = "13 3 16 18 11 20 10 17 14 5 4 6 2 12 1 15 19 0 | 26 24 25 23 8 9 22 7 27 | 21"  # shards 2 0 | 4 1 | 3
SEED7_EPOCH1 = "5 2 0 21 1 3 6 4 | 18 12 8 11 14 16 19 10 7 9 17 13 20 15 | 23 24 25 27 22 26"  # shards 3 0 | 2 1 | 4
SEED8 = "2 6 21 4 5 0 1 3 | 8 12 13 11 16 20 17 18 19 7 10 15 9 14 | 26 22 25 27 24 23"  # shards 3 0 | 1 2 | 4
SEED6 = "12 27 20 11 14 24 25 18 16 19 22 13 10 15 23 26 17 | 4 5 6 2 21 0 1 3 | 8 7 9"  # shards 2 4 | 0 3 | 1
SEED3_ONE_BLOCK = "4 6 25 14 19 21 5 8 17 22 16 15 12 13 7 10 23 24 2 20 18 26 11 1 27 0 9 3"  # block_shards 8


def reference(order: str) -> list[str]:
    return [f"s{int(n):03d}" for n in order.replace("|", " ").split()]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
@pytest.mark.parametrize("workers", workers_param(0, 1, 2, 3))
def test_loader_order_equals_plan_whatever_the_worker_count(even, workers, batch_size):
    loader = open_loader(
        even.path, rank=1, world=2, workers=workers, batch_size=batch_size, seed=11, block_shards=2, decode=False
    )
    expected = even.plan_keys(loader.stream)
    assert len(expected) == 14
    assert read_batches(loader) == batched(expected, batch_size)


def test_stream_iterated_directly_follows_the_plan(even):
    stream = open_stream(even.path, rank=2, world=4, seed=4, block_shards=2, decode=False)
    assert [sample.key for sample in stream] == even.plan_keys(stream)


def test_plan_and_read_order_are_the_fixed_reference(even):
    """Backs the two tests above, whose expected order is the plan itself: rank r of W reads the strip
    order[r·n : (r+1)·n], n = ceil(N / W)."""
    whole = open_loader(even.path, batch_size=4, seed=11, block_shards=2, decode=False)
    assert even.plan_keys(whole.stream) == flat(read_batches(whole)) == reference(SEED11)
    rank1 = open_loader(even.path, rank=1, world=2, batch_size=5, seed=11, block_shards=2, decode=False)
    expected = reference("21 16 20 17 14 19 12 4 3 1 5 2 0 6")  # SEED11[14:28]: 14 samples, half the split
    assert even.plan_keys(rank1.stream) == expected and read_batches(rank1) == batched(expected, 5)
    stream = open_stream(even.path, rank=2, world=4, seed=4, block_shards=2, decode=False)
    assert [sample.key for sample in stream] == reference("15 22 25 1 9 2 4") == reference(SEED4)[14:21]


# ----------------------------------------------------------------------------- 3. determinism


def test_same_seed_and_epoch_give_the_same_order(even):
    first = read_batches(open_loader(even.path, 0, 2, batch_size=2, seed=7, block_shards=2))
    second = read_batches(open_loader(even.path, 0, 2, batch_size=2, seed=7, block_shards=2))
    assert first == second
    assert flat(first) != even.keys[0::2]  # actually shuffled


def test_other_epoch_or_seed_gives_another_order_of_the_same_samples(even):
    loader = open_loader(even.path, seed=7, block_shards=2)
    epoch0 = flat(read_batches(loader))
    loader.set_epoch(1)
    epoch1 = flat(read_batches(loader))
    other_seed = flat(read_batches(open_loader(even.path, seed=8, block_shards=2)))
    assert epoch0 != epoch1 and epoch0 != other_seed
    assert sorted(epoch0) == sorted(epoch1) == sorted(other_seed) == even.keys
    again = open_loader(even.path, seed=7, block_shards=2)
    again.set_epoch(1)
    assert flat(read_batches(again)) == epoch1


def test_epoch_and_seed_orders_are_the_fixed_reference(even):
    """Backs the two tests above with literals: seed 7 epochs 0 and 1, seed 8, and rank 0 of 2 under seed 7."""
    loader = open_loader(even.path, seed=7, block_shards=2, decode=False)
    assert flat(read_batches(loader)) == reference(SEED7)
    loader.set_epoch(1)
    assert flat(read_batches(loader)) == reference(SEED7_EPOCH1)
    assert flat(read_batches(open_loader(even.path, seed=8, block_shards=2, decode=False))) == reference(SEED8)
    rank0 = read_batches(open_loader(even.path, 0, 2, batch_size=2, seed=7, block_shards=2, decode=False))
    assert rank0 == batched(reference("13 3 16 18 11 20 10 17 14 5 4 6 2 12"), 2)  # SEED7[0:14]


def test_without_shuffle_the_order_is_natural(even):
    assert flat(read_batches(open_loader(even.path, shuffle=False, batch_size=4))) == even.keys
    for rank in range(2):
        loader = open_loader(even.path, rank, 2, shuffle=False, batch_size=3)
        assert flat(read_batches(loader)) == even.keys[rank * 14 : (rank + 1) * 14]


# ----------------------------------------------------------------------------- 4. resume


@multiprocess
def test_resume_mid_epoch_continues_exactly_at_the_same_world_size(even):
    batch_size, consumed = 2, 3
    config = dict(batch_size=batch_size, seed=5, block_shards=2, decode=False)
    for rank in range(2):
        whole = open_loader(even.path, rank, 2, workers=2, **config)
        whole.set_epoch(1)
        uninterrupted = read_batches(whole)

        first = open_loader(even.path, rank, 2, workers=2, **config)
        first.set_epoch(1)
        before = take(first, consumed)
        state = first.state_dict()
        assert state["epoch"] == 1 and (state["rounds"], state["extra"]) == (consumed, 0)
        assert state["read"] == consumed * batch_size * 2
        assert state["world_size"] == 2

        resumed = open_loader(even.path, rank, 2, workers=2, **config)
        resumed.load_state_dict(state)
        assert len(resumed) == len(uninterrupted) - consumed
        after = read_batches(resumed)
        assert before + after == uninterrupted
        assert resumed.stream.batches == len(uninterrupted) and len(resumed.stream) == 0


def test_iterating_the_same_loader_again_continues_from_its_position(even):
    loader = open_loader(even.path, batch_size=4, seed=9)
    uninterrupted = read_batches(open_loader(even.path, batch_size=4, seed=9))
    before = take(loader, 2)
    assert before + read_batches(loader) == uninterrupted
    assert read_batches(loader) == []  # epoch done until set_epoch
    loader.set_epoch(1)
    assert len(flat(read_batches(loader))) == len(even.keys)


@multiprocess
@pytest.mark.parametrize("new_world", [1, 3])
def test_elastic_resume_reads_exactly_the_rest_of_the_epoch(even, new_world):
    batch_size, consumed = 2, 4
    config = dict(batch_size=batch_size, seed=6, block_shards=2, decode=False)
    states, before = [], []
    for rank in range(2):
        loader = open_loader(even.path, rank, 2, workers=2, **config)
        before += flat(take(loader, consumed))
        states.append(loader.state_dict())
    position = consumed * batch_size * 2
    assert states[0] == states[1] and states[0]["read"] == position
    assert (len(even.keys) - position) % new_world == 0

    after = []
    for rank in range(new_world):
        loader = open_loader(even.path, rank, new_world, workers=1, **config)
        loader.load_state_dict(states[0])
        after.append(flat(read_batches(loader)))
    assert [len(keys) for keys in after] == [(len(even.keys) - position) // new_world] * new_world
    read_after = [key for keys in after for key in keys]
    assert len(set(read_after)) == len(read_after)  # no repeats
    assert set(read_after) == set(even.keys) - set(before)  # no skips
    assert len(set(before)) == len(before) == position

    # the global order is unchanged: the new ranks' strips, one after another, are the old strips' unread tails
    global_order = even.plan_keys(open_stream(even.path, **config))
    half, read = len(even.keys) // 2, consumed * batch_size
    assert read_after == global_order[read:half] + global_order[half + read :]


def test_resume_on_fewer_ranks_with_more_accumulation_continues_exactly(even):
    """2 ranks × 1 micro-batch and 1 rank × 2 micro-batches deal to the same 2 readers: step k is batch k of both,
    so the resumed rank takes the very batches the two ranks would have taken, alternately."""
    config = dict(batch_size=2, seed=6, block_shards=2, decode=False)
    states, rests = [], []
    for rank in range(2):
        loader = open_loader(even.path, rank, 2, **config)
        take(loader, 3)
        states.append(loader.state_dict())
        rests.append(read_batches(loader))
    assert states[0] == states[1] and states[0]["readers"] == 2
    one = open_loader(even.path, 0, 1, accumulation=2, **config)
    one.load_state_dict(states[0])
    assert read_batches(one) == [batch for pair in zip(*rests) for batch in pair]
    assert one.stream.read_so_far == len(even.keys)


def test_elastic_resume_order_is_the_fixed_reference(even):
    """Backs the test above with a literal (no workers): seed 6, 4 batches of 2 on each of 2 ranks read positions
    0-7 and 14-21 of their strips 0-13 and 14-27; then 3 ranks deal the rest, positions 8-13 and 22-27, in strips
    of 4."""
    config = dict(batch_size=2, seed=6, block_shards=2, decode=False)
    order = reference(SEED6)
    states = []
    for rank, expected in enumerate(["12 27 20 11 14 24 25 18", "23 26 17 4 5 6 2 21"]):  # SEED6[0:8], [14:22]
        loader = open_loader(even.path, rank, 2, **config)
        assert flat(take(loader, 4)) == reference(expected) == order[rank * 14 : rank * 14 + 8]
        states.append(loader.state_dict())
    assert states[0] == states[1] and states[0]["read"] == 16 and states[0]["segment"] == [[0, 28]]
    rest = order[8:14] + order[22:28]
    for rank, expected in enumerate(["16 19 22 13", "10 15 0 1", "3 8 7 9"]):
        loader = open_loader(even.path, rank, 3, **config)
        loader.load_state_dict(states[0])
        assert flat(read_batches(loader)) == reference(expected) == rest[rank * 4 : rank * 4 + 4]
        assert loader.state_dict()["segment"] == [[8, 14], [22, 28]]


# ----------------------------------------------------------------------------- 5. refusing a foreign state


def test_load_state_dict_refuses_another_seed(even):
    state = take_state(even, seed=1)
    loader = open_loader(even.path, seed=2)
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict(state)
    assert loader.stream.batches == 0


def test_load_state_dict_refuses_another_dataset(even, odd, tmp_path):
    state = take_state(even, seed=1)
    other_count = open_loader(odd.path, seed=1)
    with pytest.raises(ValueError, match="num_samples"):
        other_count.load_state_dict(state)
    same_count = open_loader(write_split(tmp_path / "train", EVEN_SIZES, "another-fingerprint").path, seed=1)
    with pytest.raises(ValueError, match="fingerprint") as caught:
        same_count.load_state_dict(state)
    assert "seed" not in str(caught.value) and "num_samples" not in str(caught.value)
    assert same_count.stream.batches == 0


def take_state(split: Split, **config) -> dict:
    loader = open_loader(split.path, batch_size=2, **config)
    take(loader, 1)
    assert loader.state_dict()["read"] == 2
    return loader.state_dict()


# ----------------------------------------------------------------------------- 6. corrupt shards


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_shard_is_dropped_up_front_with_skip(damaged):
    truncate_half(damaged.path / "shard-000004.tar")
    lost = set(damaged.shard_keys["shard-000004.tar"])
    assert len(lost) == 6
    ranks = read_ranks(damaged, 2, 0, batch_size=3, seed=3, on_corrupt="skip")
    assert [len(flat(batches)) for batches in ranks] == [11, 11]
    assert len(ranks[0]) == len(ranks[1]) == 4
    counts = Counter(key for batches in ranks for key in flat(batches))
    assert counts == Counter(key for key in damaged.keys if key not in lost)
    stream = open_stream(damaged.path, on_corrupt="skip")
    assert stream.num_samples == 22 and "shard-000004.tar" not in [shard.name for shard in stream.shards]


def test_truncated_shard_fails_construction_with_fail(damaged):
    truncate_half(damaged.path / "shard-000002.tar")
    with pytest.raises(CorruptShardError, match=r"shard-000002\.tar"):
        open_stream(damaged.path, on_corrupt="fail")


def test_missing_shard_is_skipped_or_fails(damaged):
    (damaged.path / "shard-000001.tar").unlink()
    assert open_stream(damaged.path, on_corrupt="skip").num_samples == 25
    with pytest.raises(CorruptShardError, match=r"shard-000001\.tar"):
        open_stream(damaged.path, on_corrupt="fail")


def corrupt_jpeg(split: Split, key: str) -> tuple[str, int]:
    """Overwrite the start of the sample's JPEG member in place; returns (shard name, index in shard)."""
    name, position = next((name, keys.index(key)) for name, keys in split.shard_keys.items() if key in keys)
    shard = split.path / name
    tar_key = f"{number(key):09d}"
    _, data_offset = member_offsets(shard, f"{tar_key}.0.jpg")
    overwrite(shard, data_offset, b"\x00" * 32)
    return name, position


@pytest.mark.parametrize("workers", workers_param(0, 2))
def test_corrupt_image_is_skipped_and_counted(damaged, workers):
    bad = "s010"
    corrupt_jpeg(damaged, bad)
    loader = open_loader(damaged.path, workers=workers, batch_size=4, seed=3, on_corrupt="skip")
    assert len(loader.stream.shards) == 5  # the size is right: not dropped up front
    expected = [[key for key in batch if key != bad] for batch in batched(damaged.plan_keys(loader.stream), 4)]
    assert len(loader) == 7
    batches = read_batches(loader)
    assert batches == expected
    assert len(batches) == 7
    assert sorted(len(batch) for batch in batches) == [3, 4, 4, 4, 4, 4, 4]
    assert loader.skipped == 1
    assert loader.stream.batches == 7 and loader.stream.read_so_far == 28  # the skipped sample counts as read


@pytest.mark.parametrize("workers", workers_param(0, 2))
def test_corrupt_image_fails_iteration_with_fail(damaged, workers):
    corrupt_jpeg(damaged, "s010")
    loader = open_loader(damaged.path, workers=workers, batch_size=4, seed=3, on_corrupt="fail")
    with pytest.raises(CorruptShardError, match=r"shard-000002\.tar sample 0") as caught:
        read_batches(loader)
    # Free the DataLoader iterator (and its workers) now: left to the cycle collector, PyTorch's
    # worker shutdown waits 5 s per worker.
    traceback.clear_frames(caught.tb)


def test_corrupt_image_goes_unnoticed_without_decode(damaged):
    corrupt_jpeg(damaged, "s010")
    loader = open_loader(damaged.path, batch_size=4, on_corrupt="fail", decode=False)
    assert sorted(flat(read_batches(loader))) == damaged.keys
    assert loader.skipped == 0


def damage_header(split: Split, key: str) -> None:
    """Flip one byte of the name in the header of the sample's JSON member (size unchanged)."""
    name = next(name for name, keys in split.shard_keys.items() if key in keys)
    shard = split.path / name
    header_offset, _ = member_offsets(shard, f"{number(key):09d}.json")
    with open(shard, "rb") as handle:
        handle.seek(header_offset + 3)
        byte = handle.read(1)
    overwrite(shard, header_offset + 3, bytes([byte[0] ^ 0x01]))


def test_damaged_tar_header_is_caught_by_the_checksum(damaged):
    damage_header(damaged, "s013")  # shard-000002.tar, sample 3
    stream = open_stream(damaged.path, seed=3, on_corrupt="skip", decode=False)
    items = list(stream)
    skipped = [item for item in items if isinstance(item, Skipped)]
    assert len(skipped) == 1
    assert (skipped[0].shard, skipped[0].index) == ("shard-000002.tar", 3)
    assert "checksum" in skipped[0].reason
    expected = damaged.plan_keys(stream)
    assert [item.key if isinstance(item, Sample) else "s013" for item in items] == expected

    failing = open_stream(damaged.path, seed=3, on_corrupt="fail", decode=False)
    with pytest.raises(CorruptShardError, match=r"shard-000002\.tar.*checksum"):
        list(failing)


def test_damaged_tar_header_in_a_pipe_is_caught_by_the_checksum(damaged):
    damage_header(damaged, "s013")
    urls = f"pipe:cat {damaged.path}/shard-{{000000..000004}}.tar"
    stream = open_stream(urls, index=damaged.path / INDEX_NAME, seed=3, on_corrupt="skip", decode=False)
    items = list(stream)
    expected = damaged.plan_keys(stream)
    assert len(items) == len(expected)
    by_key = dict(zip(expected, items))
    assert isinstance(by_key["s013"], Skipped) and "checksum" in by_key["s013"].reason
    for key, item in by_key.items():  # no garbage: whatever was read is the right sample
        assert isinstance(item, Skipped) or item.key == key
    # samples of the other shards are unaffected
    assert all(isinstance(item, Sample) for key, item in by_key.items() if number(key) not in range(10, 21))
    with pytest.raises(CorruptShardError, match="checksum"):
        list(open_stream(urls, index=damaged.path / INDEX_NAME, seed=3, on_corrupt="fail", decode=False))


def test_skipped_samples_keep_their_place_in_the_fixed_reference_order(damaged):
    """Backs the corrupt-image and damaged-header tests above (seed 3, all 5 shards in one block), whose expected
    order is the plan itself."""
    order = reference(SEED3_ONE_BLOCK)
    corrupt_jpeg(damaged, "s010")  # position 15 of the order: batch 3 comes out one short
    loader = open_loader(damaged.path, batch_size=4, seed=3, on_corrupt="skip")
    assert read_batches(loader) == [[key for key in batch if key != "s010"] for batch in batched(order, 4)]
    assert loader.skipped == 1
    damage_header(damaged, "s013")  # shard-000002.tar sample 3, position 13
    items = list(open_stream(damaged.path, seed=3, on_corrupt="skip", decode=False))
    assert [item.key if isinstance(item, Sample) else (item.shard, item.index) for item in items] == [
        ("shard-000002.tar", 3) if key == "s013" else key for key in order
    ]
    urls = f"pipe:cat {damaged.path}/shard-{{000000..000004}}.tar"
    assert damaged.plan_keys(open_stream(urls, index=damaged.path / INDEX_NAME, seed=3, decode=False)) == order


def test_pipe_reads_every_sample_but_the_one_with_a_damaged_header(damaged):
    damage_header(damaged, "s017")  # shard-000002.tar holds s010..s020; s017 is its sample 7
    urls = f"pipe:cat {damaged.path}/shard-{{000000..000004}}.tar"
    local = open_loader(damaged.path, batch_size=4, seed=3, decode=False)
    assert set(damaged.keys) - set(flat(read_batches(local))) == {"s017"}
    piped = open_loader(urls, index=damaged.path / INDEX_NAME, batch_size=4, seed=3, decode=False)
    missing = set(damaged.keys) - set(flat(read_batches(piped)))
    # The transferred copy fails the index's sha256, so it is not cached; it is still read by seeking, as locally.
    assert missing == {"s017"}


# ----------------------------------------------------------------------------- 7, 8. pipe: URLs and brace patterns


@pytest.mark.parametrize("workers", workers_param(0, 2))
@pytest.mark.parametrize("index_kind", ["path", "pipe"])
def test_pipe_urls_read_the_same_as_the_local_folder(even, workers, index_kind):
    urls = f"pipe:cat {even.path}/shard-{{000000..000004}}.tar"
    index = even.path / INDEX_NAME if index_kind == "path" else f"pipe:cat {even.path / INDEX_NAME}"
    config = dict(batch_size=3, seed=4, block_shards=2)
    for rank in range(2):
        local = read_batches(open_loader(even.path, rank, 2, workers, **config))
        piped_loader = open_loader(urls, rank, 2, workers, index=index, **config)
        assert all(shard.is_remote for shard in piped_loader.stream.shards)
        assert read_batches(piped_loader) == local
        assert piped_loader.skipped == 0


def test_pipe_urls_find_the_index_beside_them_or_name_where_they_looked(even, tmp_path):
    pattern = f"pipe:cat {even.path}/shard-{{000000..000004}}.tar"
    config = dict(batch_size=2, seed=4, block_shards=2)
    assert read_batches(open_loader(pattern, 1, 2, **config)) == read_batches(open_loader(even.path, 1, 2, **config))
    with pytest.raises(ValueError, match=rf"pipe:cat {tmp_path}/index.json: cannot read .* pass index="):
        open_stream(f"pipe:cat {tmp_path}/shard-{{000000..000004}}.tar")


def test_brace_pattern_of_local_paths_finds_the_sibling_index(even):
    pattern = f"{even.path}/shard-{{000000..000004}}.tar"
    config = dict(batch_size=2, seed=4, block_shards=2)
    assert read_batches(open_loader(pattern, 1, 2, **config)) == read_batches(open_loader(even.path, 1, 2, **config))
    subset = open_loader(f"{even.path}/shard-{{000001..000003}}.tar", shuffle=False)
    assert [shard.name for shard in subset.stream.shards] == [shard_name(i) for i in (1, 2, 3)]
    assert flat(read_batches(subset)) == even.keys[7:22]


def test_shard_missing_from_the_index_is_refused(even, tmp_path):
    stray = tmp_path / "shard-000009.tar"
    shutil.copy(even.path / "shard-000000.tar", stray)
    with pytest.raises(ValueError, match="shard-000009.tar"):
        open_stream([str(even.path / "shard-000000.tar"), str(stray)], index=even.path / INDEX_NAME)


# ----------------------------------------------------------------------------- 9. decoding


def assert_colour(image: Image.Image, n: int, tolerance: int) -> None:
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (8, 8)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels - np.array(colour(n))).max() <= tolerance, (n, pixels[0, 0])


@pytest.mark.parametrize("workers", workers_param(0, 2))
def test_decode_gives_rgb_images_with_the_written_pixels(even, workers):
    samples = [sample for batch in open_loader(even.path, workers=workers, batch_size=5, seed=2) for sample in batch]
    assert sorted(sample.key for sample in samples) == even.keys
    for sample in samples:
        n = number(sample.key)
        jpeg, png = sample.images
        assert (jpeg.format, png.format) == ("jpeg", "png")
        assert_colour(jpeg._pil, n, JPEG_TOLERANCE)  # decoded in the reader, not here
        assert_colour(png._pil, n, 0)  # stored as a palette PNG, comes back RGB
        assert sample.answers() == [f"colour {n}"] and sample.label == str(n % 3)


def test_without_decode_images_stay_encoded_bytes(even):
    samples = [sample for batch in open_loader(even.path, batch_size=5, seed=2, decode=False) for sample in batch]
    assert len(samples) == 28
    for sample in samples:
        n = number(sample.key)
        jpeg, png = sample.images
        assert jpeg._pil is None and png._pil is None
        assert isinstance(jpeg.data, bytes) and jpeg.data == encoded(n, "jpeg")
        assert isinstance(png.data, bytes) and png.data == encoded(n, "png")


# ----------------------------------------------------------------------------- 10. rank / world validation


@pytest.mark.parametrize("rank, world", [(2, 2), (3, 2), (-1, 2), (0, 0)])
def test_rank_outside_the_world_is_refused(even, rank, world):
    with pytest.raises(ValueError, match=f"rank {rank} is outside world size {world}"):
        open_stream(even.path, rank=rank, world=world)


# ----------------------------------------------------------------------------- 11. sample fraction

# The quarter of the even split that seed 11 keeps, round(0.25 × 28) = 7 samples: each shard its share by largest
# remainder, which ones drawn from the seed and the shard alone (data_shards.stream.order.kept_samples), in its
# epoch-0 order with block_shards 2: SEED11 with every other sample taken out.
SEED11_QUARTER = "9 26 | 13 18 14 | 2 6"


def subset(split: Split, **config) -> set[str]:
    return set(split.plan_keys(open_stream(split.path, decode=False, **config)))


@pytest.mark.parametrize(
    "fraction, dataset, size",
    [(0.25, "even", 7), (0.5, "odd", 14), (0.375, "even", 10), (0.3, "odd", 8), (0.01, "even", 1), (1.0, "odd", 27)],
)
def test_sample_fraction_keeps_round_f_times_n_samples(request, fraction, dataset, size):
    """round(f × n) by Python's round, a tie going to the even integer (13.5 → 14, 10.5 → 10); at least one."""
    split = request.getfixturevalue(dataset)
    stream = open_stream(split.path, seed=5, sample_fraction=fraction, decode=False)
    assert stream.epoch_samples == len(stream) == size and stream.num_samples == len(split.keys)
    keys = split.plan_keys(stream)
    assert len(keys) == len(set(keys)) == size and set(keys) <= set(split.keys)


def test_sample_fraction_is_the_fixed_reference_and_one_is_the_full_order(even):
    quarter = reference(SEED11_QUARTER)
    config = dict(seed=11, block_shards=2, decode=False)
    assert even.plan_keys(open_stream(even.path, sample_fraction=0.25, **config)) == quarter
    assert [key for key in reference(SEED11) if key in quarter] == quarter  # the full order, the others taken out
    assert even.plan_keys(open_stream(even.path, sample_fraction=1.0, **config)) == reference(SEED11)


@pytest.mark.parametrize("world, fraction", [(2, 0.5), (3, 0.75), (7, 0.25)])
def test_sample_fraction_subset_is_the_same_on_every_rank(even, world, fraction):
    config = dict(batch_size=2, seed=3, block_shards=2, sample_fraction=fraction, decode=False)
    whole = even.plan_keys(open_stream(even.path, **config))
    ranks = [flat(batches) for batches in read_ranks(even, world, 0, **config)]
    assert [len(keys) for keys in ranks] == [len(whole) // world] * world
    assert flat(ranks) == whole  # rank r reads the r-th strip of it


def test_sample_fraction_pads_ranks_to_equal_counts_within_the_subset(even):
    config = dict(batch_size=2, seed=3, sample_fraction=0.5, decode=False)  # 14 samples on 3 ranks: 5 each
    ranks = [flat(batches) for batches in read_ranks(even, 3, 0, **config)]
    assert [len(keys) for keys in ranks] == [5, 5, 5]
    assert set(flat(ranks)) == subset(even, seed=3, sample_fraction=0.5)


def test_sample_fraction_subset_follows_the_seed(even):
    chosen = subset(even, seed=11, sample_fraction=0.25)
    assert chosen == set(reference(SEED11_QUARTER)) == subset(even, seed=11, block_shards=5, sample_fraction=0.25)
    assert subset(even, seed=12, sample_fraction=0.25) != chosen


def test_sample_fraction_subset_is_stable_across_epochs_its_order_is_not(even):
    config = dict(seed=11, block_shards=2, decode=False)
    stream, full = open_stream(even.path, sample_fraction=0.25, **config), open_stream(even.path, **config)
    stream.epoch = full.epoch = 1
    epoch1 = even.plan_keys(stream)
    assert set(epoch1) == set(reference(SEED11_QUARTER)) and epoch1 != reference(SEED11_QUARTER)
    assert epoch1 == [key for key in even.plan_keys(full) if key in epoch1]


def test_sample_fraction_resume_mid_epoch_continues_within_the_subset(even):
    config = dict(batch_size=2, seed=6, block_shards=2, sample_fraction=0.5, decode=False)
    uninterrupted = [read_batches(open_loader(even.path, rank, 2, **config)) for rank in range(2)]
    states, before = [], []
    for rank in range(2):
        loader = open_loader(even.path, rank, 2, **config)
        before.append(take(loader, 2))
        states.append(loader.state_dict())
    assert states[0] == states[1] and (states[0]["read"], states[0]["sample_fraction"]) == (8, 0.5)
    for rank in range(2):
        resumed = open_loader(even.path, rank, 2, **config)
        resumed.load_state_dict(states[0])
        assert before[rank] + read_batches(resumed) == uninterrupted[rank]
    assert {key for batches in uninterrupted for key in flat(batches)} == subset(even, seed=6, sample_fraction=0.5)

    with pytest.raises(ValueError, match="sample_fraction: saved 0.5 now 0.25"):
        open_loader(even.path, **{**config, "sample_fraction": 0.25}).load_state_dict(states[0])
    saved_before_fractions = {key: value for key, value in states[0].items() if key != "sample_fraction"}
    whole = open_loader(even.path, 0, 2, **{**config, "sample_fraction": 1.0})
    whole.load_state_dict(saved_before_fractions)
    assert whole.stream.batches == 2


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_sample_fraction_outside_zero_to_one_is_refused_by_the_stream(fraction):
    with pytest.raises(ValueError, match=r"sample_fraction must be in \(0, 1\]"):
        StreamConfig(sample_fraction=fraction)


def test_training_loader_takes_the_fraction_logs_it_and_plans_its_steps(even, caplog):
    """The trainer's loaders: data.sample_fraction thins the training (shuffled) loader only, once, on the log."""
    from trainer.config.schema import load
    from trainer.distributed.world import WorldInfo
    from trainer.train.loaders import make_loader, planned_steps

    overrides = ["model.path=m", f"data.train={even.path}", "data.num_workers=0", "train.micro_batch_size=2"]
    config = load(None, [*overrides, "data.sample_fraction=0.5", "train.epochs=3"])
    world = WorldInfo(0, 0, 2, 2, "127.0.0.1", 29500, "test")
    with caplog.at_level(logging.INFO, logger="shardtune"):
        train = make_loader(config, world, str(even.path), None, shuffle=True)
    assert caplog.messages == ["data.sample_fraction=0.5: 14 of 28 training samples"]
    evaluation = make_loader(config, world, str(even.path), None, shuffle=False)
    assert (len(train.stream), len(evaluation.stream)) == (7, 14)
    assert planned_steps(config, train.stream) == 3 * 4  # 7 samples per rank: 4 micro-batches of 2, per epoch
    assert planned_steps(config, evaluation.stream) == 3 * 7


def test_evaluation_batches_follow_eval_batch_size_and_training_the_micro_batch(even):
    from trainer.config.schema import load
    from trainer.distributed.world import WorldInfo
    from trainer.train.loaders import make_loader

    overrides = ["model.path=m", f"data.train={even.path}", "data.num_workers=0", "train.micro_batch_size=2"]
    world = WorldInfo(0, 0, 2, 2, "127.0.0.1", 29500, "test")
    for eval_batch, sizes in ((0, [2] * 7), (5, [5, 5, 4])):
        config = load(None, [*overrides, f"eval.batch_size={eval_batch}"])
        evaluation = make_loader(config, world, str(even.path), None, shuffle=False)
        assert [len(batch) for batch in evaluation] == sizes  # 14 samples per rank
        train = make_loader(config, world, str(even.path), None, shuffle=True)
        assert {len(batch) for batch in train} == {2}
