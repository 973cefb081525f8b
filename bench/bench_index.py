"""Index start-up and memory at scale: a synthetic split of 10 M samples in 100k shards (issue 16, part 2).

Two index layouts of the same split, written once (not timed):

  tables  the current layout: `index.json` lists the shards (name, samples, bytes, sha256); each sample's
          byte offset is in `offsets.npy`, memory-mapped; keys are in `keys.jsonl`, which the stream never reads;
  inline  the layout before issue 16 (offsets and keys of every sample inside `index.json`), still read.

Each is measured in a fresh interpreter, as rank 0 of 64 with 8 DataLoader workers would start: the main
process builds the `ShardStream` (index parsed, shards resolved), then a worker opens its reader (offset
table) and maps its first run of positions (4,096 samples) to byte ranges. Reported: wall time of each step
and the process's resident memory after it, above the interpreter with its imports: private (RssAnon) and,
for the memory-mapped offsets, file pages (RssFile: page cache, shared between the node's workers). No tar is read:
the shards are `pipe:` URLs, which the stream does not open before a sample is asked for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script without installing

from data_shards.index import save_index  # noqa: E402
from data_shards.sample import SCHEMA_VERSION  # noqa: E402
from data_shards.write import shard_name  # noqa: E402

SAMPLE_BYTES = 120_000


def shard_entries(shards: int, per_shard: int, inline: bool) -> list[dict]:
    offsets = np.arange(per_shard + 1, dtype=np.int64) * SAMPLE_BYTES
    entries = []
    for s in range(shards):
        entry = {"name": shard_name(s), "samples": per_shard, "bytes": int(offsets[-1]) + 1024, "sha256": f"{s:064x}"}
        if inline:
            entry["offsets"] = offsets.tolist()
            entry["keys"] = [f"{s * per_shard + i:012d}" for i in range(per_shard)]
        entries.append(entry)
    return entries


def write_split(folder: Path, shards: int, per_shard: int, layout: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = {"schema_version": SCHEMA_VERSION, "split": "train", "num_samples": shards * per_shard}
    header["source"] = {"format": "synthetic", "fingerprint": f"bench-index-{shards}-{per_shard}"}
    if layout == "inline":
        text = json.dumps({**header, "shards": shard_entries(shards, per_shard, inline=True)})
        (folder / "index.json").write_text(text)
    else:
        save_index(folder, {**header, "shards": shard_entries(shards, per_shard, inline=True)})
    return folder


CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from data_shards.stream import ShardStream, StreamConfig
from data_shards.stream.reader import CHUNK_ITEMS

def rss_mb():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return np.array([int(fields[key].split()[0]) / 1024 for key in ("RssAnon", "RssFile")])

base = rss_mb()
start = time.perf_counter()
urls = "pipe:cat {folder}/shard-{{000000..{last:06d}}}.tar"
stream = ShardStream(urls, index="{folder}/index.json", config=StreamConfig(batch_size=8), rank=0, world_size=64)
built, built_rss = time.perf_counter() - start, rss_mb() - base
start = time.perf_counter()
readers = stream.open_readers()
positions = next(stream.local_positions(0, 8))
shard, sample, _ = stream.order().items(positions)
spans = [readers[0].offsets.span(stream.shards[s].name, i) for s, i in zip(shard.tolist(), sample.tolist())]
worker, worker_rss = time.perf_counter() - start, rss_mb() - base
print(json.dumps(dict(build_s=built, build_mb=built_rss.tolist(), worker_s=worker, worker_mb=worker_rss.tolist(),
                      spans=len(spans))))
"""


def measure(folder: Path, shards: int) -> dict:
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), folder=folder, last=shards - 1)
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_index"))
    parser.add_argument("--layouts", default="tables,inline")
    args = parser.parse_args()
    print(f"{args.shards * args.per_shard:,} samples in {args.shards:,} shards; rank 0 of 64, worker 0 of 8")
    for layout in args.layouts.split(","):
        folder = args.out / f"{layout}-{args.shards}x{args.per_shard}"
        if not (folder / "index.json").exists():
            started = time.perf_counter()
            write_split(folder, args.shards, args.per_shard, layout)
            print(f"  wrote {folder} in {time.perf_counter() - started:.1f} s (not timed below)")
        size = sum(path.stat().st_size for path in folder.iterdir()) / 2**20
        index_mb = (folder / "index.json").stat().st_size / 2**20
        got = measure(folder, args.shards)
        (build_anon, _), (worker_anon, worker_file) = got["build_mb"], got["worker_mb"]
        print(
            f"  {layout:7s} index.json {index_mb:6.1f} MB (all files {size:6.1f} MB) | stream built "
            f"{got['build_s']:5.2f} s, +{build_anon:6.1f} MB | worker ready {got['worker_s']:5.2f} s, "
            f"+{worker_anon:6.1f} MB private, +{worker_file:5.1f} MB mapped file pages ({got['spans']} offsets read)"
        )


if __name__ == "__main__":
    main()
