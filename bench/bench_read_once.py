"""Remote shard transfers per epoch, through the README's `ShardStream` / `ShardLoader` API (issue 16, part 1).

A split of 2,000 samples in 20 shards (the issue's measurement) is read for one epoch through `pipe:` commands
that log every transfer, as `aws s3 cp … -` would be, with every rank a process of its own and each with its
DataLoader workers, all sharing one node-local cache. Reported per layout: shard bytes transferred over the
split's size, and the epoch's wall time against reading the same shards as local files (what the cache costs).
Then the transfers the deal implies for one epoch at 64 ranks × 8 workers (8 nodes), over larger splits.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script without installing

from data_shards.index import INDEX_NAME  # noqa: E402
from data_shards.sample import Sample, Turn  # noqa: E402
from data_shards.stream import ShardLoader, ShardStream, StreamConfig  # noqa: E402
from data_shards.stream.transfers import plan_transfers  # noqa: E402
from data_shards.write import shard_name, write_index, write_shard  # noqa: E402

SHARDS, PER_SHARD, FILLER = 20, 100, 20_000  # 2,000 samples of about 20 kB


def write_split(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    for s in range(SHARDS):
        samples = [
            Sample(key=f"k{n:05d}", images=[], turns=[Turn("user", "x" * FILLER), Turn("assistant", str(n))])
            for n in range(s * PER_SHARD, (s + 1) * PER_SHARD)
        ]
        infos.append(write_shard(folder / shard_name(s), samples, s * PER_SHARD))
    write_index(folder, "train", infos, {"source": {"format": "bench", "fingerprint": "read-once"}})
    return folder


def read_rank(urls: list[str], index: Path, rank: int, world: int, workers: int, out: multiprocessing.Queue) -> None:
    stream = ShardStream(urls, index=index, config=StreamConfig(batch_size=8, seed=0), rank=rank, world_size=world)
    out.put([sample.key for batch in ShardLoader(stream, num_workers=workers) for sample in batch])


def epoch(urls: list[str], index: Path, world: int, workers: int) -> tuple[float, Counter]:
    """One epoch on `world` rank processes at once; (seconds, how often each key was read)."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    started = time.perf_counter()
    ranks = [
        multiprocessing.Process(target=read_rank, args=(urls, index, rank, world, workers, queue))
        for rank in range(world)
    ]
    for process in ranks:
        process.start()
    keys = Counter(key for _ in ranks for key in queue.get())
    for process in ranks:
        process.join()
    return time.perf_counter() - started, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="2x2,4x2", help="ranks x workers, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split = write_split(Path(tmp) / "train")
        total = sum(path.stat().st_size for path in split.glob("*.tar"))
        print(f"{SHARDS * PER_SHARD} samples in {SHARDS} shards, {total / 2**20:.1f} MB")
        for layout in args.layouts.split(","):
            world, workers = (int(part) for part in layout.split("x"))
            log, cache = Path(tmp) / f"{layout}.log", Path(tmp) / f"cache-{layout}"
            os.environ["SHARDTUNE_CACHE"] = str(cache)
            urls = [f"pipe:echo {shard_name(s)} >> {log}; cat {split / shard_name(s)}" for s in range(SHARDS)]
            local_s, local_keys = epoch(
                [str(split / shard_name(s)) for s in range(SHARDS)], split / INDEX_NAME, world, workers
            )
            remote_s, remote_keys = epoch(urls, split / INDEX_NAME, world, workers)
            fetched = Counter(log.read_text().split())
            ratio = sum(fetched.values()) * (total / SHARDS) / total
            assert remote_keys == local_keys and set(remote_keys.values()) == {1}
            print(
                f"  {world} ranks x {workers} workers: {sum(fetched.values())} transfers of {SHARDS} shards = "
                f"{ratio:.2f}x the shard bytes; epoch {remote_s:.2f} s remote (cache filled) vs {local_s:.2f} s local"
            )
            shutil.rmtree(cache)
    for shards in (10_000, 100_000):
        plan = plan_transfers([100] * shards, [1] * shards, world_size=64, ranks_per_node=8)
        print(f"  planned, 64 ranks x 8 workers on 8 nodes, {shards:,} shards of 100: {plan.ratio:.4f}x")
    plan = plan_transfers([PER_SHARD] * SHARDS, [1] * SHARDS, world_size=64, ranks_per_node=8, block_shards=1)
    print(f"  planned, 64 x 8 on 8 nodes, this split ({SHARDS} shards), block_shards=1: {plan.ratio:.2f}x")


if __name__ == "__main__":
    main()
