"""The two pairs jobs: folds and pairs made from per-image scores, or per-fold pair CSVs made elsewhere.

Both check everything (scores, images, pair quotas, leakage) before writing, then shard each fold in
`OUT/fold{k}/` and write `OUT/folds.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_shards.build import BuildConfig, prepare_output
from data_shards.images import ImagePolicy
from data_shards.pairs.fold_csvs import named_images, paired_fold_files
from data_shards.pairs.images import image_hashes
from data_shards.pairs.leakage import Sides, refuse_leakage
from data_shards.pairs.plan import PairSettings, plan_folds, write_pairs_csv
from data_shards.pairs.scores import read_scores
from data_shards.pairs.shards import SIDES, build_fold
from data_shards.pairs.summary import fold_summary, write_summary
from data_shards.sources import SourceOptions
from data_shards.write import ShardLayout


@dataclass
class PairsJob:
    """Where images are and shards go, and how `build` checks and writes them."""

    image_root: Path
    out: Path
    allow_leakage: bool = False
    overwrite: bool = False
    policy: ImagePolicy = field(default_factory=ImagePolicy)
    layout: ShardLayout = field(default_factory=ShardLayout)
    options: SourceOptions = field(default_factory=SourceOptions)
    keep_duplicates: bool = False
    workers: int = 0
    progress: bool = True

    def build_config(self, fold_dir: Path, first_csv: Path, seed: int) -> BuildConfig:
        return BuildConfig(
            input=first_csv,
            out=fold_dir,
            format="pairs",
            image_root=self.image_root,
            seed=seed,
            policy=self.policy,
            layout=self.layout,
            options=self.options,
            keep_duplicates=self.keep_duplicates,
            workers=self.workers,
            progress=self.progress,
        )

    def check_leakage(self, folds: dict[int, Sides], hashes: dict[str, str]) -> None:
        if not self.allow_leakage:
            refuse_leakage(folds, hashes)


def pairs_from_scores(scores_path: Path, settings: PairSettings, job: PairsJob) -> dict[str, Any]:
    images = read_scores(scores_path)
    hashes = image_hashes({image.name: image.origin for image in images}, job.image_root)
    plans = plan_folds(images, settings)
    folds = {plan.number: {side: {images[i].name for i in plan.images[side]} for side in SIDES} for plan in plans}
    job.check_leakage(folds, hashes)
    prepare_output(job.out, job.overwrite)
    files = {}
    for plan in plans:
        fold_dir = job.out / f"fold{plan.number}"
        fold_dir.mkdir()
        files[plan.number] = {side: fold_dir / f"pairs_{side}.csv" for side in SIDES}
        for side in SIDES:
            write_pairs_csv(files[plan.number][side], plan.pairs[side], images)
    split = {"by": "score bins", "bins": settings.score_bins, "folds": settings.folds}
    reports = shard_folds(job, files, split, settings.seed)
    how = {"made_from": {"scores": str(scores_path)}, "settings": vars(settings), "seed": settings.seed}
    scores = {image.name: image.score for image in images}
    return finish(job, fold_summary(how, folds, hashes, reports, scores))


def pairs_from_fold_csvs(train_pattern: str, val_pattern: str, job: PairsJob) -> dict[str, Any]:
    found = paired_fold_files(train_pattern, val_pattern)  # numbered as their files are (LMOL's from 1)
    files = dict(enumerate(found[number] for number in sorted(found)))  # fold0 … as `build --fold` and SLURM arrays
    named = {number: {side: named_images(path) for side, path in sides.items()} for number, sides in files.items()}
    origins: dict[str, str] = {}
    for sides in named.values():
        for names in sides.values():
            for name, origin in names.items():
                origins.setdefault(name, origin)
    hashes = image_hashes(origins, job.image_root)
    folds = {number: {side: set(names) for side, names in sides.items()} for number, sides in named.items()}
    job.check_leakage(folds, hashes)
    prepare_output(job.out, job.overwrite)
    reports = shard_folds(job, files, {"by": "fold CSVs", "folds": len(files)}, seed=0)
    made_from = {f"fold{n}": {side: str(path) for side, path in csvs.items()} for n, csvs in files.items()}
    return finish(job, fold_summary({"made_from": made_from}, folds, hashes, reports))


def shard_folds(job: PairsJob, files: dict[int, dict[str, Path]], split: dict, seed: int) -> dict[int, dict]:
    """Each fold's pair CSVs through the build's steps, into `OUT/fold{k}/`; the fold reports by fold number."""
    reports = {}
    for number, csvs in files.items():
        fold_dir = job.out / f"fold{number}"
        fold_dir.mkdir(exist_ok=True)
        reports[number] = build_fold(csvs, job.build_config(fold_dir, csvs["train"], seed), {**split, "fold": number})
    return reports


def finish(job: PairsJob, summary: dict[str, Any]) -> dict[str, Any]:
    summary["allow_leakage"] = job.allow_leakage
    write_summary(job.out, summary)
    return summary
