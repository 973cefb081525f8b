"""Remote shards are transferred about once per epoch for the whole job (issue 16, part 1).

The split is read through `pipe:` commands that log every transfer, as an object-store CLI would be; the
ranks of one node share the node-local cache, DataLoader workers included. Also: http(s) URLs, a transfer
that breaks, a cache smaller than the working set, and the transfers the deal implies at 64 ranks × 8 workers.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from data_shards.index import INDEX_NAME, shard_keys
from data_shards.sample import Sample, Turn
from data_shards.stream import ShardLoader, ShardStream, Skipped, StreamConfig
from data_shards.stream.transfers import plan_transfers
from data_shards.write import shard_name, write_index, write_shard

SHARDS, PER_SHARD = 20, 100  # the measurement: 2,000 samples in 20 shards


def text_sample(n: int) -> Sample:
    return Sample(key=f"k{n:05d}", images=[], turns=[Turn("user", f"question {n}"), Turn("assistant", f"answer {n}")])


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("remote") / "train"
    folder.mkdir()
    infos = [
        write_shard(folder / shard_name(s), [text_sample(n) for n in range(s * PER_SHARD, (s + 1) * PER_SHARD)], 0)
        for s in range(SHARDS)
    ]
    write_index(folder, "train", infos, {"source": {"format": "test", "fingerprint": "remote"}})
    return folder


def logged_urls(split: Path, log: Path) -> list[str]:
    """One `pipe:` command per shard that appends the shard's name to `log` as it transfers it."""
    return [f"pipe:echo {shard_name(s)} >> {log}; cat {split / shard_name(s)}" for s in range(SHARDS)]


def read_job(split: Path, urls: list[str], world: int, workers: int, **config) -> list[str]:
    """Every key every rank reads in one epoch, ranks one after another on one node (one shared cache)."""
    keys = []
    for rank in range(world):
        stream = ShardStream(
            urls, index=split / INDEX_NAME, config=StreamConfig(batch_size=8, **config), rank=rank, world_size=world
        )
        keys += [sample.key for batch in ShardLoader(stream, num_workers=workers) for sample in batch]
    return keys


def transferred_ratio(split: Path, log: Path) -> float:
    names = log.read_text().split()
    sizes = {path.name: path.stat().st_size for path in split.glob("*.tar")}
    return sum(sizes[name] for name in names) / sum(sizes.values())


@pytest.mark.multiprocess
@pytest.mark.parametrize("world, workers", [(2, 2), (4, 2)])
def test_each_shard_is_transferred_once_per_epoch_for_the_job(split, tmp_path, world, workers):
    log = tmp_path / "transfers.log"
    keys = read_job(split, logged_urls(split, log), world, workers, seed=3, decode=False)
    assert Counter(keys) == Counter(key for names in shard_keys(split).values() for key in names)
    assert transferred_ratio(split, log) <= 1.1
    assert sorted(Counter(log.read_text().split()).values()) == [1] * SHARDS  # in fact exactly once here


def test_remote_epoch_reads_what_the_local_folder_reads(split, tmp_path):
    local = read_job(split, [str(split / shard_name(s)) for s in range(SHARDS)], 2, 0, seed=4)
    assert read_job(split, logged_urls(split, tmp_path / "log"), 2, 0, seed=4) == local


def test_a_cache_smaller_than_the_working_set_fetches_again_and_reads_the_same(split, tmp_path):
    log = tmp_path / "transfers.log"
    one_and_a_half_shards_gb = (split / shard_name(0)).stat().st_size * 1.5 / 2**30
    keys = read_job(split, logged_urls(split, log), 2, 0, seed=5, block_shards=4, cache_gb=one_and_a_half_shards_gb)
    assert keys == read_job(split, [str(split / shard_name(s)) for s in range(SHARDS)], 2, 0, seed=5, block_shards=4)
    assert len(log.read_text().split()) > SHARDS  # evicted copies are fetched again
    assert len(list(Path(os.environ["SHARDTUNE_CACHE"]).glob("*.tar"))) == 1  # the limit holds


def test_a_broken_transfer_skips_only_the_samples_it_lost_and_is_not_cached(split, tmp_path):
    cut = tmp_path / "cut.tar"
    cut.write_bytes((split / shard_name(3)).read_bytes()[:20_000])
    urls = [str(split / shard_name(s)) for s in range(SHARDS)]
    urls[3] = f"pipe:cat {cut}; exit 3; {split / shard_name(3)}"  # a CLI that fails half way (last word: the name)
    stream = ShardStream(urls, index=split / INDEX_NAME, config=StreamConfig(shuffle=False), rank=0, world_size=1)
    items = list(stream)
    lost = [item for item in items if isinstance(item, Skipped)]
    assert 0 < len(lost) < PER_SHARD and {item.shard for item in lost} == {shard_name(3)}
    assert "exited with 3" in lost[0].reason
    assert len(items) == SHARDS * PER_SHARD
    assert not list(Path(os.environ["SHARDTUNE_CACHE"]).glob("*.tar"))  # nothing remote was cached
    with pytest.raises(Exception, match="exited with 3"):
        list(ShardStream(urls, index=split / INDEX_NAME, config=StreamConfig(on_corrupt="fail"), world_size=1, rank=0))


@pytest.fixture
def http_split(split):
    """The split served over http from localhost, as an object store's https endpoint would serve it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(split))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_https_urls_find_the_sibling_index_and_read_like_local_files(split, http_split):
    urls = [f"{http_split}/{shard_name(s)}" for s in range(SHARDS)]
    config = StreamConfig(batch_size=8, seed=6)
    remote = [s.key for b in ShardLoader(ShardStream(urls, config=config, rank=1, world_size=2)) for s in b]
    local = [s.key for b in ShardLoader(ShardStream(split, config=config, rank=1, world_size=2)) for s in b]
    assert remote == local and len(remote) == SHARDS * PER_SHARD // 2


def test_planned_transfers_at_64_ranks_by_8_workers():
    """Computed from the deal: 8 nodes of 8 ranks, each node's cache fetching what its ranks' strips touch. Only
    blocks where two nodes' strips meet are fetched twice, so the excess is about nodes × block_shards / shards."""
    big = plan_transfers([1000] * 10_000, [100 << 20] * 10_000, world_size=64, ranks_per_node=8)
    assert big.ratio <= 1.01
    small = plan_transfers([PER_SHARD] * SHARDS, [1] * SHARDS, world_size=64, ranks_per_node=8, block_shards=1)
    assert small.ratio == pytest.approx(1.4)  # 2,000 samples are too few for 512 readers: 28 of 20 shards fetched
    assert plan_transfers([PER_SHARD] * SHARDS, [1] * SHARDS, world_size=4, ranks_per_node=4).ratio == 1.0
