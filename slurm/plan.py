"""The launch plan of a submission: its runs (single, k-fold or grid), their resolved configs and sbatch settings."""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurm.job import TrainingRun
from slurm.request import RequestError, parse_grid, parse_time, tasks_per_node, validate

ROOT = Path(__file__).resolve().parents[1]
STALE_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class RunSpec:
    name: str  # "" for a single run; "fold0"; "lr=0.0001_r=8"
    output_dir: str
    overrides: tuple[str, ...]


@dataclass
class Plan:
    config: str
    runs: list[RunSpec]
    group: str
    parameters: dict[str, Any]
    log_dir: str
    max_requeues: int
    resolved: list[dict[str, Any]] = field(default_factory=list)

    def callables(self) -> list[TrainingRun]:
        return [TrainingRun(self.config, list(run.overrides), run.output_dir, self.max_requeues) for run in self.runs]


def safe(text: str) -> str:
    return re.sub(r"[^\w.=+-]", "_", text)


def grid_runs(axes: list[tuple[str, list[str]]], output_dir: str) -> list[RunSpec]:
    varying = [key for key, values in axes if len(values) > 1]
    short = [key.rsplit(".", 1)[-1] for key in varying]
    label = dict(zip(varying, short if len(set(short)) == len(short) else varying))
    runs = []
    for combination in itertools.product(*[values for _, values in axes]):
        chosen = list(zip([key for key, _ in axes], combination))
        name = "_".join(f"{label[key]}={safe(value)}" for key, value in chosen if key in label) or "run"
        runs.append(RunSpec(name, f"{output_dir}/{name}", tuple(f"{key}={value}" for key, value in chosen)))
    return runs


def fold_runs(folds: int, fold_root: str, output_dir: str) -> list[RunSpec]:
    return [
        RunSpec(
            f"fold{k}",
            f"{output_dir}/fold{k}",
            (f"data.train={fold_root}/fold{k}/train", f"data.val={fold_root}/fold{k}/val"),
        )
        for k in range(folds)
    ]


def expand_runs(
    output_dir: str,
    data_train: str,
    folds: int = 0,
    fold_root: str | None = None,
    grid: list[str] | None = None,
    group: str = "",
) -> tuple[list[RunSpec], str]:
    """Which runs one submission makes, with their output dirs and per-run overrides, and the W&B group."""
    output_dir = output_dir.rstrip("/") or "."
    if folds:
        root = (fold_root or str(Path(data_train).parent)).rstrip("/")
        runs, kind = fold_runs(folds, root, output_dir), f"kfold{folds}"
    elif grid:
        runs, kind = grid_runs(parse_grid(grid), output_dir), "grid"
    else:
        return [RunSpec("", output_dir, ())], group
    group = group or f"{Path(output_dir).resolve().name}-{kind}"
    return [
        RunSpec(
            run.name, run.output_dir, (*run.overrides, f"train.output_dir={run.output_dir}", f"tracking.group={group}")
        )
        for run in runs
    ], group


def slurm_parameters(args: argparse.Namespace, tasks: int, runs: int) -> dict[str, Any]:
    threads = args.cpus_per_task or 1
    setup = [
        f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}",
        "export TOKENIZERS_PARALLELISM=false",
        *(["export DS_ACCELERATOR=cpu"] if args.gpus_per_node == 0 else []),
        f"unset {' '.join(STALE_VARIABLES)}",
        *args.setup,
    ]
    parameters: dict[str, Any] = {
        "job_name": args.job_name,
        "time": parse_time(args.time),
        "nodes": args.nodes,
        "ntasks_per_node": tasks,
        "signal_delay_s": args.signal_delay_s,
        "setup": setup,
        "additional_parameters": {"chdir": os.getcwd(), "requeue": True},
    }
    optional = {
        "partition": args.partition,
        "account": args.account,
        "qos": args.qos,
        "cpus_per_task": args.cpus_per_task,
        "constraint": args.constraint,
        "gpus_per_node": args.gpus_per_node or None,
        "mem": f"{args.mem_gb}GB" if args.mem_gb else None,
    }
    parameters.update({key: value for key, value in optional.items() if value is not None})
    if runs > 1:
        parameters["array_parallelism"] = args.array_parallelism
    return parameters


def missing_folds(args: argparse.Namespace, runs: list[RunSpec]) -> list[str]:
    """A k-fold sweep's fold folders that do not exist, each with the command that builds it."""
    problems = []
    for run in runs:
        train = dict(o.split("=", 1) for o in run.overrides)["data.train"]
        if not Path(train).is_dir():
            problems.append(
                f"--array-folds/--fold-root: {train} is missing (build it with `python -m data_shards "
                f"build ... --folds {args.array_folds} --fold {run.name[4:]} --out {Path(train).parent}`)"
            )
    return problems


def build_plan(args: argparse.Namespace) -> Plan:
    """Check the request (all of it, one error), resolve every run's config, and the sbatch parameters."""
    from trainer.config.fields import to_dict
    from trainer.config.schema import ConfigError, load

    problems = validate(args)
    overrides = [*args.overrides, *([f"train.preset={args.preset}"] if args.preset else [])]
    try:
        base = load(args.config, overrides)
    except ConfigError as error:
        raise RequestError(problems + [f"--config {args.config}: {p}" for p in error.problems]) from None
    if problems:
        raise RequestError(problems)
    runs, group = expand_runs(
        base.train.output_dir, base.data.train, args.array_folds or 0, args.fold_root, args.grid, base.tracking.group
    )
    if args.array_folds:
        problems += missing_folds(args, runs)
    resolved = []
    for run in runs:
        try:
            resolved.append(
                to_dict(load(args.config, [*overrides, *run.overrides, "checkpoint.resume=auto"]), redact=True)
            )
        except ConfigError as error:
            problems += [f"run {run.name or run.output_dir}: {p}" for p in error.problems]
    if problems:
        raise RequestError(problems)
    full = [RunSpec(run.name, run.output_dir, (*overrides, *run.overrides)) for run in runs]
    log_dir = str(Path(args.log_dir or Path(base.train.output_dir) / "slurm").absolute()) + "/%j"
    return Plan(
        str(args.config),
        full,
        group,
        slurm_parameters(args, tasks_per_node(args), len(runs)),
        log_dir,
        args.max_requeues,
        resolved,
    )


def batch_script(plan: Plan) -> str:
    """The sbatch file submitit writes for this plan (its own function, so no SLURM is needed)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(plan.log_dir)])
    count = {"map_count": len(plan.runs)} if len(plan.runs) > 1 else {}
    return _make_sbatch_string(command=command, folder=plan.log_dir, **plan.parameters, **count)
