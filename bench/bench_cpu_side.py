"""The CPU side of a step at real shapes (issue 17): read → decode → processor + collate from shards, per family,
on one core; the share of each phase, and how many loader workers one GPU needs at a stated step time.

Data: `--samples` photo-like 640×480 JPEGs (smooth gradients, sensor-like noise, a few shapes; quality 90, about as
costly to decode as camera pictures of that size), one per description sample with a 20-60 word answer, built into
shards (1) as they are and (2) resized at shard time (`--max-side`, `ImagePolicy.max_side`) to what the family's
processor keeps anyway, where that is less: LLaVA-1.5 resizes the shortest side to 336 and crops the centre, so
448×336 loses nothing; LLaVA-NeXT's grid keeps up to 672 and Qwen2-VL's dynamic resolution keeps the pixels
(its token count would change), so both keep the originals.
Processors: each family's as its real checkpoint publishes it (the tiny kit at the published image settings):
llava-1.5-7b (336), llava-v1.6-mistral-7b (anyres, grid up to 672), qwen2-vl-2b (min/max pixels).
Timing: one process, one thread (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`); read = iterating the split with
decoding off; decode = the same with decoding on, less read; processor + collate = the trainer's `Collator` over
micro batches of `--micro-batch`. Each phase is the best of `--repeats` passes (page cache warm).
Workers needed = ceil(micro batch / step time / samples per second per core), at `--step-time` seconds per micro
batch (the default, 0.5 s for 8 samples, is a 7B LoRA step on one H100 at about 8k tokens/s, a stated
assumption until the GPU benchmark measures it).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script without installing

import torch  # noqa: E402

from data_shards.build import BuildConfig, build  # noqa: E402
from data_shards.images import ImagePolicy  # noqa: E402
from data_shards.stream import ShardStream, Skipped, StreamConfig  # noqa: E402
from trainer.batches.collate import Collator  # noqa: E402
from trainer.models.processor import load_processor  # noqa: E402
from trainer.testing.tiny import GENERIC_ENGLISH, build_tiny_model  # noqa: E402

FAMILIES = {"llava": 448, "llava_next": None, "qwen2_vl": None}  # family → shard-time max side where it loses nothing
WIDTH, HEIGHT = 640, 480


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/cpu_side"))
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--step-time", type=float, default=0.5, help="GPU seconds per micro batch (assumed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    return args


def photo(rng: np.random.Generator) -> bytes:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack(
        [np.sin(x / rng.uniform(40, 200) + c) * 60 + np.cos(y / rng.uniform(40, 200)) * 60 for c in range(3)]
    )
    pixels = base.transpose(1, 2, 0) + 128 + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    for _ in range(4):
        x0, y0 = int(rng.integers(0, WIDTH - 100)), int(rng.integers(0, HEIGHT - 100))
        pixels[y0 : y0 + int(rng.integers(30, 100)), x0 : x0 + int(rng.integers(30, 100))] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def raw_dataset(out: Path, samples: int) -> Path:
    data_json = out / "raw" / "describe.json"
    if data_json.exists():
        return data_json
    (out / "raw" / "images").mkdir(parents=True, exist_ok=True)
    rng, words = np.random.default_rng(0), " ".join(GENERIC_ENGLISH).split()
    records = []
    for index in range(samples):
        (out / "raw" / "images" / f"p{index:05d}.jpg").write_bytes(photo(rng))
        answer = " ".join(words[(index * 7 + i) % len(words)] for i in range(int(rng.integers(20, 61))))
        turns = [{"from": "human", "value": "<image>\nDescribe this image."}, {"from": "gpt", "value": answer}]
        records.append({"id": f"p{index:05d}", "image": f"images/p{index:05d}.jpg", "conversations": turns})
    data_json.write_text(json.dumps(records))
    return data_json


def shards(out: Path, data_json: Path, max_side: int | None) -> Path:
    folder = out / f"shards-{max_side or 'original'}"
    if not (folder / "train").exists():
        policy = ImagePolicy(max_side=max_side)
        build(BuildConfig(input=data_json, out=folder, policy=policy, workers=0, progress=False, overwrite=True))
    return folder / "train"


def best_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def samples_of(split: Path, decode: bool) -> list:
    stream = ShardStream(split, config=StreamConfig(shuffle=False, decode=decode), rank=0, world_size=1)
    return [sample for sample in stream if not isinstance(sample, Skipped)]


def phases(split: Path, model: Path, args: argparse.Namespace) -> dict:
    collator = Collator(load_processor(str(model)), 1 << 20, None)
    decoded = samples_of(split, decode=True)
    batches = [decoded[i : i + args.micro_batch] for i in range(0, len(decoded), args.micro_batch)]
    read = best_seconds(lambda: samples_of(split, decode=False), args.repeats)
    read_decode = best_seconds(lambda: samples_of(split, decode=True), args.repeats)
    collate = best_seconds(lambda: [collator(batch) for batch in batches], args.repeats)
    seconds = {"read": read, "decode": max(0.0, read_decode - read), "processor_collate": collate}
    total = sum(seconds.values())
    per_core = len(decoded) / total
    tokens = sum(collator(batch).num_tokens for batch in batches) / len(decoded)
    return {
        "samples_per_s_per_core": per_core,
        "share": {phase: value / total for phase, value in seconds.items()},
        "tokens_per_sample": tokens,
        "workers_needed": math.ceil(args.micro_batch / args.step_time / per_core),
    }


def print_table(rows: dict) -> None:
    print("| family, shards | samples/s per core | read | decode | processor + collate | tokens/sample | workers |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        share = row["share"]
        print(
            f"| {name} | {row['samples_per_s_per_core']:.1f} | {share['read']:.0%} | {share['decode']:.0%} | "
            f"{share['processor_collate']:.0%} | {row['tokens_per_sample']:.0f} | {row['workers_needed']} |"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data_json = raw_dataset(args.out, args.samples)
    rows = {}
    for family, max_side in FAMILIES.items():
        model = build_tiny_model(family, args.out / "models" / family)  # the published image settings
        for side in dict.fromkeys([None, max_side]):
            name = f"{family}, {f'resized to {side} at shard time' if side else f'{WIDTH}×{HEIGHT} as is'}"
            rows[name] = phases(shards(args.out, data_json, side), model, args)
            print(f"{name}: {json.dumps(rows[name])}", flush=True)
    print_table(rows)
    result = {"samples": args.samples, "micro_batch": args.micro_batch, "step_time_s": args.step_time, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
