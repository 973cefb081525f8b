"""What the user asks SLURM for: the resource request's options parsed and checked, every problem named at once."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path
from typing import Any

TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


class RequestError(ValueError):
    """An impossible or malformed request; the message names every bad option."""

    def __init__(self, problems: list[str]):
        super().__init__("cannot submit:\n  " + "\n  ".join(problems))
        self.problems = problems


def parse_time(text: str) -> int:
    """SLURM's --time formats → whole minutes (rounded up); RequestError names --time."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise RequestError([f"--time: {text!r} is not a SLURM time ({TIME_FORMATS})"])
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # MM:SS
        seconds = int(first) * 60 + int(second)
    else:  # MM
        seconds = int(first) * 60
    if seconds <= 0:
        raise RequestError([f"--time: {text!r} is no time at all"])
    return -(-seconds // 60)


def split_values(text: str) -> list[str]:
    """`1e-4,2e-4` → two values; commas inside [..] (a YAML list) do not split."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return values + [current]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    axes, problems = [], []
    for item in items:
        key, sep, text = item.partition("=")
        values = [v.strip() for v in split_values(text)] if sep else []
        if not sep or not key or not all(values):
            problems.append(f"--grid: {item!r} is not section.key=value1,value2,...")
        elif key in dict(axes):
            problems.append(f"--grid: {key} given twice")
        else:
            axes.append((key.strip(), values))
    if problems:
        raise RequestError(problems)
    return axes


def tasks_per_node(args: argparse.Namespace) -> int:
    """One task per GPU; on a CPU job (`--gpus-per-node 0`) `--tasks-per-node`, default 1."""
    return args.gpus_per_node if args.gpus_per_node > 0 else (args.tasks_per_node or 1)


def check_request(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.nodes < 1:
        problems.append(f"--nodes: must be >= 1, got {args.nodes}")
    if args.gpus_per_node < 0:
        problems.append(f"--gpus-per-node: must be >= 0, got {args.gpus_per_node}")
    if args.tasks_per_node is not None:
        if args.tasks_per_node < 1:
            problems.append(f"--tasks-per-node: must be >= 1, got {args.tasks_per_node}")
        elif args.gpus_per_node > 0 and args.tasks_per_node != args.gpus_per_node:
            problems.append(
                f"--tasks-per-node {args.tasks_per_node} with --gpus-per-node {args.gpus_per_node}: the "
                "layout is one task per GPU; leave --tasks-per-node for CPU jobs (--gpus-per-node 0)"
            )
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        problems.append(f"--cpus-per-task: must be >= 1, got {args.cpus_per_task}")
    if args.max_requeues < 0:
        problems.append(f"--max-requeues: must be >= 0, got {args.max_requeues}")
    if args.array_folds is not None and args.array_folds < 2:
        problems.append(f"--array-folds: k-fold needs at least 2 folds, got {args.array_folds}")
    if args.array_folds and args.grid:
        problems.append("--array-folds and --grid: one sweep per submission, pick one")
    if args.fold_root and not args.array_folds:
        problems.append("--fold-root: only meaningful with --array-folds")
    try:
        parse_time(args.time)
    except RequestError as error:
        problems += error.problems
    if args.grid:
        try:
            parse_grid(args.grid)
        except RequestError as error:
            problems += error.problems
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.strip() == "checkpoint.resume" and value.strip() != "auto":
            problems.append(
                f"{item}: submitted runs always resume (checkpoint.resume=auto) so that a requeued job "
                "continues; start afresh with a new train.output_dir"
            )
    return problems


def partition_limits(partition: str | None) -> dict[str, Any] | None:
    """Nodes, CPUs and GPUs per node of the partition, from `sinfo` (None when SLURM is not reachable)."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).exists():  # sinfo would retry for a minute
        return None
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%c|%G"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode:
        return None
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 3]
    names = sorted({row[0].rstrip("*") for row in rows})
    chosen = [row for row in rows if (row[0].rstrip("*") == partition if partition else row[0].endswith("*"))]
    if not chosen:
        return {"names": names, "found": False}
    gpus = [sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", row[3])) for row in chosen]
    return {
        "names": names,
        "found": True,
        "name": chosen[0][0].rstrip("*"),
        "nodes": sum(int(row[1]) for row in chosen),
        "cpus": max(int(re.match(r"\d+", row[2]).group()) for row in chosen),
        "gpus": max(gpus),
    }


def check_against_cluster(args: argparse.Namespace, tasks: int) -> list[str]:
    limits = partition_limits(args.partition)
    if limits is None:
        return []
    if not limits["found"]:
        what = f"no partition {args.partition!r}" if args.partition else "no default partition"
        return [f"--partition: {what} (sinfo lists: {', '.join(limits['names']) or 'none'})"]
    where, problems = f"partition {limits['name']}", []
    if args.nodes > limits["nodes"]:
        problems.append(f"--nodes: {args.nodes} requested but {where} has {limits['nodes']} node(s)")
    if args.gpus_per_node > limits["gpus"]:
        problems.append(
            f"--gpus-per-node: {args.gpus_per_node} requested but {where} nodes have at most {limits['gpus']} GPU(s)"
        )
    cpus = tasks * (args.cpus_per_task or 1)
    if cpus > limits["cpus"]:
        problems.append(
            f"--tasks-per-node × --cpus-per-task: {tasks} × {args.cpus_per_task or 1} = {cpus} "
            f"CPUs per node requested but {where} nodes have {limits['cpus']}"
        )
    return problems


def validate(args: argparse.Namespace) -> list[str]:
    """Every problem with the request: its options, then (when those are sound) the partition's limits."""
    problems = check_request(args)
    return problems or check_against_cluster(args, tasks_per_node(args))
