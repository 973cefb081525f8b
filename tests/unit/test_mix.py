"""Weighted mixes of splits: parsing, shares, each rank's equal slice of one seeded order, sources up- and
down-sampled without repeats before a source is used up, a mid-epoch resume, and the loader's state."""

import json
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import launch_training, synthetic_split

from data_shards.build import BuildConfig, build
from data_shards.stream import ShardLoader, StreamConfig
from data_shards.stream import mix as mix_module
from data_shards.stream.mix import MixPart, MixStream, allocate, parse_mix
from data_shards.stream.order import KEPT_BLOCKS
from data_shards.synthetic import make_dataset
from data_shards.write import ShardLayout


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    folders = {}
    for name, n in (("big", 60), ("small", 20)):
        dataset = make_dataset("llava", root / name / "raw", n=n, seed=1, task="color")
        records = json.loads(Path(dataset.input).read_text())
        Path(dataset.input).write_text(json.dumps([{**r, "id": f"{name}-{r['id']}"} for r in records]))
        out = root / name / "shards"
        build(BuildConfig(input=dataset.input, out=out, layout=ShardLayout(max_samples=8), workers=0, progress=False))
        folders[name] = str(out / "train")
    return folders


def test_parse_mix():
    assert parse_mix("a/train:0.7,b/train:0.3") == [MixPart("a/train", 0.7), MixPart("b/train", 0.3)]
    assert parse_mix("pipe:aws s3 cp s3://x/{0..3}.tar -:2, c:1") == [
        MixPart("pipe:aws s3 cp s3://x/{0..3}.tar -", 2.0),
        MixPart("c", 1.0),
    ]
    assert parse_mix("data/train") is None and parse_mix("shards-{a,b}.tar") is None and parse_mix("x:0.5") is None
    with pytest.raises(ValueError, match="positive"):
        parse_mix("a:0.5,b:0")


def test_allocate_sums_to_the_total_in_proportion():
    assert allocate([0.7, 0.3], 80) == [56, 24]
    assert allocate([1, 1, 1], 10) == [4, 3, 3] and sum(allocate([0.2, 0.5, 0.3], 7)) == 7


def stream(splits, rank=0, world=1, weights=(0.5, 0.5), batch=1):
    parts = [MixPart(splits["big"], weights[0]), MixPart(splits["small"], weights[1])]
    return MixStream(parts, config=StreamConfig(batch_size=batch, seed=3, decode=False), rank=rank, world_size=world)


def source_of(sample) -> str:
    return sample.key.split("-", 1)[0]


@pytest.mark.parametrize("weights, big, small", [((0.5, 0.5), 40, 40), ((0.7, 0.3), 56, 24)])
def test_an_epoch_holds_each_source_by_its_weight_without_early_repeats(splits, weights, big, small):
    """big (60 samples) is down-sampled to a subset, small (20) up-sampled: all 20 once before any twice."""
    mix = stream(splits, weights=weights)
    assert mix.epoch_samples == 80 and mix.shares() == [big, small]
    samples = list(mix)
    assert Counter(source_of(s) for s in samples) == {"big": big, "small": small}
    small_keys = [s.key for s in samples if source_of(s) == "small"]
    repeats = Counter(Counter(small_keys).values())
    assert len(set(small_keys[:20])) == 20 and repeats == ({2: 20} if small == 40 else {2: small - 20, 1: 40 - small})
    assert len({s.key for s in samples if source_of(s) == "big"}) == big
    mix.epoch = 1
    assert [s.key for s in mix] != [s.key for s in samples]  # a new interleaving and another subset of big


def test_ranks_take_equal_disjoint_slices_of_one_order(splits):
    whole = [(s.key, source_of(s)) for s in stream(splits)]
    ranks = [[(s.key, source_of(s)) for s in stream(splits, rank, 2)] for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 40
    assert ranks[0] + ranks[1] == whole  # rank r reads the r-th strip


def test_a_resumed_loader_reads_the_rest_of_the_epoch(splits):
    whole = [sample.key for batch in ShardLoader(stream(splits, batch=4)) for sample in batch]
    loader = ShardLoader(stream(splits, batch=4))
    first = []
    for batch in loader:
        first += [sample.key for sample in batch]
        if len(first) == 24:
            break
    state = loader.state_dict()
    resumed = ShardLoader(stream(splits, batch=4))
    resumed.load_state_dict(state)
    assert first + [sample.key for batch in resumed for sample in batch] == whole
    other = ShardLoader(stream(splits, weights=(0.6, 0.4), batch=4))
    with pytest.raises(ValueError, match="fingerprint"):
        other.load_state_dict(state)


def test_training_reads_a_mix_and_preflight_names_a_missing_part(tiny_llava, splits, tmp_path):
    common = [f"model.path={tiny_llava}", "data.val=", "train.max_steps=3", "train.micro_batch_size=2"]
    common += ["data.num_workers=0", "eval.at_start=false", f"train.output_dir={tmp_path / 'run'}"]
    mix = f"{splits['big']}:0.75,{splits['small']}:0.25"
    result = launch_training("in-process", 1, [*common, f"data.train={mix}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "data.train mix, 80 samples per epoch" in result.stderr and "(weight 0.25): 20 per epoch of 20" in result.stderr
    )
    missing = launch_training("in-process", 1, [*common, f"data.train={splits['big']}:1,{tmp_path / 'nope'}:1"])
    assert missing.returncode == 2 and "data.train" in missing.stderr and "nope" in missing.stderr


def test_the_mix_order_is_drawn_a_block_at_a_time_and_is_the_same_however_it_is_asked_for(splits, monkeypatch):
    monkeypatch.setattr(mix_module, "MIX_BLOCK", 16)
    mix = stream(splits, weights=(0.7, 0.3))
    whole = mix.order().items(np.arange(mix.epoch_samples))
    order = mix.order()
    assert len(order.block_start) - 1 == 5  # 80 positions in blocks of 16
    for chunk in np.array_split(np.random.default_rng(0).permutation(mix.epoch_samples), 9):
        assert all(np.array_equal(got, want[chunk]) for got, want in zip(order.items(chunk), whole))
        assert len(order.kept) <= KEPT_BLOCKS
    for block in range(5):  # every block holds the sources by their shares (56 and 24 of 80), within one
        here = whole[0][order.block_start[block] : order.block_start[block + 1]]
        assert abs((here == 0).sum() - 56 / 5) < 1 and abs((here == 1).sum() - 24 / 5) < 1


def test_a_rank_of_a_two_million_sample_mix_holds_a_few_blocks_not_the_epoch(tmp_path):
    urls = [synthetic_split(tmp_path / name, 1000, 1000, name) for name in ("a", "b")]
    parts = [MixPart(urls[0], 0.7), MixPart(urls[1], 0.3)]
    mix = MixStream(parts, config=StreamConfig(batch_size=8, seed=1), rank=5, world_size=64)
    schedule = mix.schedule()
    positions = np.concatenate([schedule.batch_positions(b) for b in range(512)])
    tracemalloc.start()
    part, shard, sample, _ = mix.order().items(positions)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8e6  # 3.8 MB; the whole order, drawn at once as before, peaked at 181 MB
    assert len(set(zip(part.tolist(), shard.tolist(), sample.tolist()))) == len(positions)
    assert abs((part == 0).mean() - 0.7) < 0.05
