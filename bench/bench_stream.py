"""Data-loading throughput: the shard stream against a LLaVA-style loose-file loader (issue 2).

Three loaders read the same synthetic LLaVA dataset (default 10,000 JPEGs of 256x256) with the
same worker count and batch size, and yield the same batches: uint8 tensors [B, S, S, 3], S being
the training resolution, in one of two geometries (--geometry):

  squash  resized to SxS, aspect not kept (SigLIP-style processors); shards built with
          `ImagePolicy(max_side=S)`;
  crop    shortest side resized to S (bicubic), then centre-cropped to SxS: the image processor
          llava-hf/llava-1.5-7b-hf publishes (CLIPImageProcessor, shortest_edge 336, resample 3,
          crop_size 336; trainer/models/families/published/llava-1.5-7b-hf.json); shards built with
          `ImagePolicy(short_side=S)`, what that processor keeps of a photo.

  shards  (a)  `ShardLoader` over shards built once with that policy: training reads a few tar
               files by seeking and decodes S-sized JPEGs;
  loose   (b)  a map-style Dataset over the JSON list that opens one file per sample with PIL,
               decodes it at full size and brings it to SxS, as LLaVA's loader does;
  limit   (c)  the very JPEG bytes stored in the shards, preloaded into memory and decoded with
               the same DataLoader settings: no I/O, tar parsing or sample schema, so the ceiling
               for (a).

Goals: (a)/(b) >= 3 (sharding at the training resolution pays off) and (a)/(c) >= 0.8 (the stream
adds little over decoding). Each loader is timed over full epochs (worker start included), after
every file has been read once (warm page cache) and after a short warm-up pass; the epochs of the
three loaders are interleaved and each loader's fastest is reported, because other processes on a
small machine slow down whichever epoch they overlap. CPU time per sample (main process and
workers) is reported beside it: it is far less sensitive to such neighbours. Building the dataset
and the shards is timed apart and not counted; both are reused from --out when their parameters
match.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script without installing

from data_shards.build import BuildConfig, build  # noqa: E402
from data_shards.images import ImagePolicy  # noqa: E402
from data_shards.index import INDEX_NAME, OFFSETS_NAME, OffsetTable, load_index  # noqa: E402
from data_shards.sample import Sample, from_members  # noqa: E402
from data_shards.stream import ShardLoader, ShardStream, StreamConfig  # noqa: E402
from data_shards.synthetic import make_loose_benchmark_set  # noqa: E402
from data_shards.tario import members_in_range  # noqa: E402

SEED = 0
WARMUP_BATCHES = 4
GOALS = {"shards/loose": 3.0, "shards/limit": 0.8}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=10_000, help="samples (one image each)")
    parser.add_argument("--image-size", type=int, default=256, help="width of the source JPEGs")
    parser.add_argument("--image-height", type=int, help="height of the source JPEGs (default: square)")
    parser.add_argument("--size", type=int, default=64, help="training resolution S")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="squash", help="how an image becomes SxS")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, all three loaders")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size, all three loaders")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per loader; the fastest is reported")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/stream"), help="dataset and shards (reused)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


# --- dataset and shards, reused when their parameters match -------------------------------------


def matches(marker: Path, params: dict) -> bool:
    return marker.exists() and json.loads(marker.read_text())["params"] == params


def prepare_source(out: Path, params: dict) -> Path:
    """The loose LLaVA dataset (data.json + images/), generated unless an identical one is there."""
    folder, marker = out / "source", out / "source.json"
    if not matches(marker, params):
        shutil.rmtree(folder, ignore_errors=True)
        (out / "shards.json").unlink(missing_ok=True)
        make_loose_benchmark_set(
            folder, params["n"], params["image_size"], seed=params["seed"], height=params.get("image_height")
        )
        marker.write_text(json.dumps({"params": params}))
    return folder / "data.json"


def prepare_shards(data_json: Path, out: Path, params: dict) -> tuple[Path, float, bool]:
    """(train split folder, build seconds, reused): shards built with the geometry's policy, or the ones there."""
    folder, marker = out / "shards", out / "shards.json"
    if matches(marker, params):
        return folder / "train", json.loads(marker.read_text())["build_seconds"], True
    config = BuildConfig(
        input=data_json,
        out=folder,
        seed=SEED,
        policy=ImagePolicy(**{GEOMETRIES[params.get("geometry", "squash")][1]: params["size"]}),
        workers=os.cpu_count() or 1,
        overwrite=True,
        progress=False,
    )
    start = time.perf_counter()
    report = build(config)
    seconds = time.perf_counter() - start
    if report["written"] != params["source"]["n"]:
        kept, wanted = report["written"], params["source"]["n"]
        raise RuntimeError(f"build kept {kept} of {wanted} samples: {report['rejects_by_reason']}")
    marker.write_text(json.dumps({"params": params, "build_seconds": seconds}))
    return folder / "train", seconds, False


def warm_page_cache(paths: Iterable[Path]) -> None:
    """Read every file once so that no loader pays for the first read from disk."""
    for path in paths:
        path.read_bytes()


# --- the three loaders: same tensors, same DataLoader settings ----------------------------------


def squash(image: Image.Image, size: int) -> Image.Image:
    """SxS, aspect not kept; resized only when the image is not SxS already."""
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BILINEAR)


def shortest_side_then_crop(image: Image.Image, size: int) -> Image.Image:
    """The CLIP image processor's geometry: shortest side to S (bicubic) unless it is S already, centre crop."""
    width, height = image.size
    if min(width, height) != size:
        scale = size / min(width, height)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


GEOMETRIES = {"squash": (squash, "max_side"), "crop": (shortest_side_then_crop, "short_side")}


def to_tensor(image: Image.Image, size: int, geometry: str) -> torch.Tensor:
    """uint8 [S, S, 3]."""
    return torch.from_numpy(np.array(GEOMETRIES[geometry][0](image, size)))


def collate_samples(samples: list[Sample], size: int, geometry: str) -> torch.Tensor:
    return default_collate([to_tensor(sample.images[0].decode(), size, geometry) for sample in samples])


class LooseImages(Dataset):
    """LLaVA-style: one image file opened, decoded and resized per sample."""

    def __init__(self, data_json: Path, size: int, geometry: str):
        self.paths = [data_json.parent / record["image"] for record in json.loads(data_json.read_text())]
        self.size, self.geometry = size, geometry

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(Image.open(self.paths[index]).convert("RGB"), self.size, self.geometry)


class MemoryJpegs(Dataset):
    """Encoded images held in memory: decoding alone."""

    def __init__(self, blobs: list[bytes], size: int, geometry: str):
        self.blobs = blobs
        self.size, self.geometry = size, geometry

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(Image.open(io.BytesIO(self.blobs[index])).convert("RGB"), self.size, self.geometry)


def stored_jpegs(split_dir: Path) -> list[bytes]:
    """The first image's bytes of every sample, exactly as stored in the split's shards."""
    blobs = []
    index = load_index(split_dir / INDEX_NAME)
    offsets = OffsetTable.load(index, split_dir / OFFSETS_NAME, str(split_dir))
    for shard in index["shards"]:
        data = (split_dir / shard["name"]).read_bytes()
        for sample in range(shard["samples"]):
            start, end = offsets.span(shard["name"], sample)
            blobs.append(from_members(members_in_range(data[start:end], shard["name"])).images[0].data)
    return blobs


def shard_epochs(split_dir: Path, args: argparse.Namespace) -> Callable[[int], Iterable[torch.Tensor]]:
    config = StreamConfig(batch_size=args.batch_size, seed=SEED, decode=True, shuffle=True)
    loader = ShardLoader(
        ShardStream(split_dir, config=config),
        num_workers=args.workers,
        collate_fn=partial(collate_samples, size=args.size, geometry=args.geometry),
    )

    def epoch(number: int) -> ShardLoader:
        loader.set_epoch(number)
        return loader

    return epoch


def dataloader_epochs(dataset: Dataset, args: argparse.Namespace) -> Callable[[int], Iterable[torch.Tensor]]:
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    return lambda number: loader


# --- timing and report ---------------------------------------------------------------------------


def warm_up(epochs: Callable[[int], Iterable[torch.Tensor]], size: int) -> None:
    """A few batches of epoch 0, checking that every loader yields the same kind of batch."""
    for batch in islice(epochs(0), WARMUP_BATCHES):
        if batch.dtype != torch.uint8 or tuple(batch.shape[1:]) != (size, size, 3):
            raise AssertionError(f"unexpected batch {batch.dtype} {tuple(batch.shape)}")


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers are joined when an epoch ends)."""
    usages = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def time_epoch(epochs: Callable[[int], Iterable[torch.Tensor]], number: int) -> dict:
    """One full epoch, from creating the iterator (workers start) to the last batch."""
    start, cpu = time.perf_counter(), cpu_seconds()
    samples = sum(len(batch) for batch in epochs(number))
    return {"samples": samples, "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu}


def measure(epochs: dict[str, Callable], size: int, repeats: int) -> dict:
    """Epochs 1..repeats of every loader, interleaved so that a busy moment hits them alike; best epoch kept."""
    for make in epochs.values():
        warm_up(make, size)
    runs = {name: [] for name in epochs}
    for number in range(1, repeats + 1):
        for name, make in epochs.items():
            runs[name].append(time_epoch(make, number))
    return {name: best_epoch(name_runs) for name, name_runs in runs.items()}


def best_epoch(runs: list[dict]) -> dict:
    best = min(runs, key=lambda run: run["seconds"])
    return {
        "samples": best["samples"],
        "seconds": best["seconds"],
        "samples_per_s": best["samples"] / best["seconds"],
        "cpu_us_per_sample": best["cpu_seconds"] / best["samples"] * 1e6,
        "all_epoch_seconds": [run["seconds"] for run in runs],
    }


def ratios(loaders: dict) -> dict:
    """Throughput ratios (the goals) and the same ratios computed from CPU time per sample."""

    def ratio(a: str, b: str) -> dict:
        return {
            "samples_per_s": loaders[a]["samples_per_s"] / loaders[b]["samples_per_s"],
            "cpu": loaders[b]["cpu_us_per_sample"] / loaders[a]["cpu_us_per_sample"],
        }

    return {"shards/loose": ratio("shards", "loose"), "shards/limit": ratio("shards", "limit")}


def print_table(result: dict) -> None:
    print(f"\n{'loader':<8}{'samples':>9}{'seconds':>9}{'samples/s':>11}{'CPU us/sample':>15}")
    for name, figures in result["loaders"].items():
        print(
            f"{name:<8}{figures['samples']:>9}{figures['seconds']:>9.2f}{figures['samples_per_s']:>11.0f}"
            f"{figures['cpu_us_per_sample']:>15.0f}"
        )
    for name, value in result["ratios"].items():
        verdict = "met" if value["samples_per_s"] >= GOALS[name] else "MISSED"
        print(
            f"{name:<13}{value['samples_per_s']:>6.2f}x (by CPU time {value['cpu']:.2f}x)"
            f"   goal >= {GOALS[name]}x: {verdict}"
        )
    build_note = " (reused; time of the original build)" if result["build"]["reused"] else ""
    print(f"shard build   {result['build']['seconds']:.1f} s{build_note}")


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": Image.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    source_params = {"n": args.n, "image_size": args.image_size, "image_height": args.image_height, "seed": SEED}
    data_json = prepare_source(args.out, source_params)
    shard_params = {"source": source_params, "size": args.size, "geometry": args.geometry}
    split_dir, build_seconds, reused = prepare_shards(data_json, args.out, shard_params)
    loose = LooseImages(data_json, args.size, args.geometry)
    warm_page_cache([*loose.paths, *split_dir.glob("*.tar")])
    epochs = {
        "shards": shard_epochs(split_dir, args),
        "loose": dataloader_epochs(loose, args),
        "limit": dataloader_epochs(MemoryJpegs(stored_jpegs(split_dir), args.size, args.geometry), args),
    }
    loaders = measure(epochs, args.size, args.repeats)
    result = {
        "params": {
            **source_params,
            "size": args.size,
            "geometry": args.geometry,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        },
        "machine": machine(),
        "build": {"seconds": build_seconds, "reused": reused},
        "loaders": loaders,
        "ratios": ratios(loaders),
        "goals": GOALS,
    }
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
