"""RUN arguments → runs. A RUN is any of:

- a run folder (`config.resolved.json` or `metrics.jsonl` in it), read as it is, finished or not;
- a glob of paths (quoted, or expanded by the shell), each read as below;
- a SLURM array or grid folder (`python -m slurm.submit --array-folds/--grid`, `launch/kfold.py train`): its run
  folders (`fold{k}/`, one per grid cell), one group named after their common `tracking.group`, else the folder;
- a W&B run folder (`wandb/offline-run-*`, `wandb/run-*`) or a `wandb/` folder (every run in it): read from
  W&B's own files, the folders of one run id (a resumed run) as one run.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

from trainer.compare.local import is_run_folder, read_run_folder
from trainer.compare.run import CompareError, Run
from trainer.compare.wandb_files import is_wandb_run, read_wandb_runs, wandb_runs_in

GLOB_CHARACTERS = set("*?[")


def paths_of(argument: str) -> list[Path]:
    if GLOB_CHARACTERS & set(argument):
        found = sorted(Path(path) for path in glob.glob(argument))
        if not found:
            raise CompareError(f"{argument}: no path matches")
        return found
    path = Path(argument)
    if not path.exists():
        raise CompareError(f"{path}: does not exist")
    return [path]


def member_runs(path: Path) -> list[Path]:
    return sorted(child for child in path.iterdir() if child.is_dir() and is_run_folder(child))


def array_runs(path: Path, members: list[Path]) -> list[Run]:
    runs = [read_run_folder(member) for member in members]
    named = {run.group for run in runs}
    group = named.pop() if len(named) == 1 and "" not in named else path.name
    for run in runs:
        run.group = group
    return runs


def read_path(path: Path, wandb_dirs: list[Path]) -> list[Run]:
    """The runs at `path`; W&B run folders are collected into `wandb_dirs`, to be read together (by run id)."""
    if is_run_folder(path):
        return [read_run_folder(path)]
    if is_wandb_run(path):
        wandb_dirs.append(path)
        return []
    if path.is_dir() and (inside := wandb_runs_in(path)):
        wandb_dirs.extend(inside)
        return []
    if path.is_dir() and (members := member_runs(path)):
        return array_runs(path, members)
    raise CompareError(
        f"{path}: not a run folder (no config.resolved.json or metrics.jsonl), a W&B run (no run-*.wandb), "
        "nor a folder of either"
    )


def read_arguments(arguments: list[str]) -> list[Run]:
    runs: list[Run] = []
    wandb_dirs: list[Path] = []
    seen: set[Path] = set()
    for argument in arguments:
        for path in paths_of(argument):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                runs += read_path(path, wandb_dirs)
    return runs + (read_wandb_runs(wandb_dirs) if wandb_dirs else [])


def unique_names(runs: list[Run]) -> None:
    """Runs that share a name are told apart: by run id where they have one, else by their path below the
    folder their sources share (`a/fold0`, `b/fold0`)."""
    counts = Counter(run.name for run in runs)
    repeated = [run for run in runs if counts[run.name] > 1]
    local = [run for run in repeated if not run.run_id]
    common = os.path.commonpath([Path(run.source).resolve() for run in local]) if len(local) > 1 else ""
    for run in repeated:
        if run.run_id:
            run.name = f"{run.name} ({run.run_id})"
        elif common:
            run.name = str(Path(run.source).resolve().relative_to(common))
