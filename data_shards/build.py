"""The build pipeline: read → check (parallel) → dedupe, unique keys → split → write shards (parallel) → report.

Images are prepared twice: once to check them (keeping only what was learnt, never the pixels,
so memory stays flat on large datasets, and the split can be planned from the whole dataset) and
again when their shard is written, in parallel per shard. That doubles the decode work of a build,
the price of not holding a dataset's images in memory or in a temporary copy.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_shards.dedupe import dedupe
from data_shards.images import ImagePolicy
from data_shards.records import RawSample, Reject
from data_shards.report import build_report, dataset_stats, write_report
from data_shards.sources import Source, SourceOptions, open_source
from data_shards.split import SplitSpec, assign_splits, explicit_groups, image_groups, source_splits
from data_shards.split_time import gap_rejects
from data_shards.validate import CheckedSample, check_sample, materialise
from data_shards.write import ShardInfo, ShardLayout, plan_shards, shard_name, write_index, write_shard

REJECTS_NAME = "rejects.jsonl"


@dataclass
class BuildConfig:
    input: Path
    out: Path
    format: str | None = None
    image_root: Path | None = None
    split: SplitSpec = field(default_factory=SplitSpec)
    seed: int = 0
    policy: ImagePolicy = field(default_factory=ImagePolicy)
    layout: ShardLayout = field(default_factory=ShardLayout)
    options: SourceOptions = field(default_factory=SourceOptions)
    workers: int = 0
    keep_duplicates: bool = False
    overwrite: bool = False
    write_shards: bool = True
    progress: bool = True


def build(config: BuildConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the report (also written to `out/report.json` and `report.md`)."""
    source = open_source(config.format, config.input, config.image_root, config.options)
    records = list(source.records())
    prepare_output(config.out, config.overwrite)
    raws = [r for r in records if isinstance(r, RawSample)]
    rejects = [r for r in records if isinstance(r, Reject)]
    check = partial(check_sample, image_root=source.image_root, policy=config.policy)
    results = run_parallel(check, raws, config.workers, "check", config.progress)
    checked = [r for r in results if isinstance(r, CheckedSample)]
    rejects += [r for r in results if isinstance(r, Reject)]
    deduped = dedupe(checked, config.keep_duplicates)
    kept, rejects = deduped.kept, rejects + deduped.rejects
    splits = split_samples(kept, config)
    if config.split.by == "time":
        kept, dropped = gap_rejects(kept, splits, config.split.gap)
        rejects += dropped
    write_rejects(config.out / REJECTS_NAME, rejects)
    header = index_header(source, config, kept)
    shard_infos = {}
    if config.write_shards:
        shard_infos = {name: write_split(name, members, source, config, header) for name, members in splits.items()}
    report = build_report(len(records), kept, rejects, splits, shard_infos, header, deduped.summary())
    write_report(config.out, report)
    return report


def prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: output folder is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_parallel(function: Callable, items: list, workers: int, desc: str, progress: bool) -> list:
    """Ordered map over a spawn pool (safe when torch or threads are loaded); in-process when workers=0."""
    bar = partial(tqdm, total=len(items), desc=desc, unit="sample", disable=None if progress else True)
    if workers == 0 or len(items) < 2:
        return list(bar(map(function, items)))
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(64, len(items) // (workers * 8)))
    with context.Pool(workers) as pool:
        return list(bar(pool.imap(function, items, chunksize=chunk)))


def split_samples(kept: list[CheckedSample], config: BuildConfig) -> dict[str, list[CheckedSample]]:
    if config.split.by == "source":
        return source_splits(kept, [s.raw.split for s in kept], [s.raw.origin for s in kept])
    labels = [s.raw.label for s in kept]
    if config.split.by == "image":
        groups = image_groups([[i.source_sha256 for i in s.images] for s in kept], [s.raw.group for s in kept])
    else:
        groups = explicit_groups([s.raw.group for s in kept])
    names = assign_splits(labels, groups, config.split, config.seed, [s.raw.extra.get("frame_index") for s in kept])
    order = [name for name, _ in config.split.ratios] if config.split.folds is None else ["train", "val"]
    splits: dict[str, list[CheckedSample]] = {name: [] for name in order}
    for sample, name in zip(kept, names):
        if name is not None:  # None: dropped in a time split's gap
            splits[name].append(sample)
    return splits


def write_split(
    name: str, members: list[CheckedSample], source: Source, config: BuildConfig, header: dict[str, Any]
) -> list[ShardInfo]:
    split_dir = config.out / name
    split_dir.mkdir(parents=True, exist_ok=True)
    ranges = plan_shards([m.num_bytes() for m in members], config.layout)
    tasks = [(split_dir / shard_name(n), [members[i] for i in r], r.start) for n, r in enumerate(ranges)]
    writer = partial(write_one_shard, image_root=source.image_root, policy=config.policy)
    infos = run_parallel(writer, tasks, config.workers, f"write {name}", config.progress)
    write_index(split_dir, name, infos, {**header, "stats": dataset_stats(members)})
    return infos


def write_one_shard(task: tuple[Path, list[CheckedSample], int], image_root: Path, policy: ImagePolicy) -> ShardInfo:
    path, members, first_index = task
    return write_shard(path, (materialise(m, image_root, policy) for m in members), first_index)


def write_rejects(path: Path, rejects: Iterable[Reject]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")


def index_header(source: Source, config: BuildConfig, kept: list[CheckedSample]) -> dict[str, Any]:
    """What reproduces the build: source fingerprint, seed and options (no paths or times, so rebuilds match)."""
    return {
        "seed": config.seed,
        "source": {"format": source.format, "fingerprint": fingerprint(source, kept)},
        "options": {
            "split": {
                "ratios": dict(config.split.ratios),
                "by": config.split.by,
                "folds": config.split.folds,
                "fold": config.split.fold,
                "time_gap": config.split.gap if config.split.by == "time" else None,
            },
            "max_pixels": config.policy.max_pixels,
            "max_side": config.policy.max_side,
            "short_side": config.policy.short_side,
            "jpeg_quality": config.policy.jpeg_quality,
            "keep_duplicates": config.keep_duplicates,
            "shard_max_samples": config.layout.max_samples,
            "shard_max_bytes": config.layout.max_bytes,
        },
    }


def fingerprint(source: Source, kept: list[CheckedSample]) -> str:
    digest = hashlib.sha256(source.format.encode())
    if source.input.is_file():
        with open(source.input, "rb") as handle:  # in blocks: a parquet input may be many GB
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    for sample in kept:
        digest.update(sample.raw.key.encode())
        for image in sample.images:
            digest.update(f"{image.ref}={image.source_sha256}".encode())
    return digest.hexdigest()


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))
