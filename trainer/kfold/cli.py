"""`launch/kfold.py train|evaluate`: the folds of `python -m data_shards pairs` (or `build --folds`) run one after
another on this machine; `python -m slurm.submit --array-folds K` runs them as one SLURM array instead.

    python launch/kfold.py train --config configs/lmol-pairs.yaml --fold-root data/lmol --folds 5 --out runs/lmol \\
        [--ranks 2] [section.key=value ...]
    python launch/kfold.py evaluate --runs runs/lmol --fold-root data/lmol --folds 5 --out runs/lmol/eval \\
        [--checkpoint best|latest] [--ranks 2] [launch/evaluate.py options, e.g. --limit 1000]

Fold k trains on `{fold-root}/fold{k}/train`, validates on `.../val` and writes `{out}/fold{k}` (the layout SLURM
arrays use). `evaluate` scores each fold's best checkpoint (by `checkpoint.best_metric`; the latest where none was
chosen) on its own held-out split with `launch/evaluate.py`, then writes the mean ± std over folds
(`summary.json`, `summary.md`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slurm.plan import RunSpec, fold_runs
from trainer.run_folder import CheckpointError, RunFolder, resolve_checkpoint


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="launch/kfold.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train every fold, one after another")
    train.add_argument("--config", type=Path, required=True, help="the recipe (YAML)")
    train.add_argument("overrides", nargs="*", help="section.key=value for every fold")
    evaluate = commands.add_parser("evaluate", help="evaluate each fold's best checkpoint, then aggregate")
    evaluate.add_argument("--runs", type=Path, required=True, help="the folder holding fold{k}/ runs")
    evaluate.add_argument("--checkpoint", choices=("best", "latest"), default="best", help="which checkpoint per fold")
    for command in (train, evaluate):
        command.add_argument("--fold-root", type=Path, required=True, help="folder holding fold{k}/train and val")
        command.add_argument("--folds", type=int, required=True, help="number of folds K")
        command.add_argument("--out", type=Path, required=True, help="runs (train) or reports (evaluate) go here")
        command.add_argument("--ranks", type=int, default=1, help="ranks per fold (>1: the deepspeed launcher)")
    return root


def main(argv: list[str] | None = None) -> int:
    args, evaluate_options = parser().parse_known_args(argv)  # what kfold does not know goes to launch/evaluate.py
    if args.command == "train" and evaluate_options:
        parser().error(f"unrecognized arguments: {' '.join(evaluate_options)}")
    args.evaluate_options = evaluate_options
    runs = fold_runs(args.folds, str(args.fold_root), str(args.out if args.command == "train" else args.runs))
    missing = [str(args.fold_root / run.name) for run in runs if not (args.fold_root / run.name).is_dir()]
    if missing:
        print(f"error: --fold-root {args.fold_root}: no fold folder {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.command == "train":
        return train_folds(args, runs)
    return evaluate_folds(args, runs)


def train_folds(args: argparse.Namespace, runs: list[RunSpec]) -> int:
    from trainer.kfold.launch import run_training

    group = f"tracking.group={Path(args.out).resolve().name}-kfold{len(runs)}"  # as a SLURM array names its folds
    for run in runs:
        overrides = [group, *args.overrides, *run.overrides, f"train.output_dir={run.output_dir}"]
        code = run_training(args.config, overrides, args.ranks)
        if code != 0:
            print(f"error: {run.name} ended with exit code {code}; later folds not started", file=sys.stderr)
            return code
    return 0


def evaluate_folds(args: argparse.Namespace, runs: list[RunSpec]) -> int:
    from trainer.evaluate import aggregate
    from trainer.kfold.launch import run_evaluation

    reports = []
    for run in runs:
        try:
            checkpoint = chosen_checkpoint(RunFolder(Path(run.output_dir)), args.checkpoint)
        except CheckpointError as error:
            print(f"error: {run.name}: no checkpoint to evaluate: {error}", file=sys.stderr)
            return 2
        out = args.out / run.name
        options = [
            "--checkpoint",
            str(checkpoint),
            "--shards",
            str(args.fold_root / run.name / "val"),
            "--out",
            str(out),
        ]
        code = run_evaluation([*options, *args.evaluate_options], args.ranks)
        if code != 0:
            return code
        reports.append(str(out / "report.json"))
    return aggregate.main(["--reports", *reports, "--out", str(args.out)])


def chosen_checkpoint(run: RunFolder, which: str) -> Path:
    """`RUN:best`, or `RUN:latest` where asked for or where no best was chosen (`checkpoint.best_metric` unset)."""
    return resolve_checkpoint(f"{run.root}:{which if run.best() else 'latest'}")
