"""W&B runs read from their own files, with no server: `wandb/offline-run-*/run-*.wandb` (what `tracking.wandb=offline`
writes into the run folder; an online run keeps the same log as `wandb/run-*`).

Offline, W&B writes no config or summary file, only its transaction log; `wandb leet inspect --json` (wandb ≥ 0.31)
prints that log's records as JSON lines, a run still being written included. A resumed run starts a new folder with
the same run id each time: those folders are one run, read in the order they started, each later one continuing
(and, for the steps logged again, replacing) the history of the earlier ones. A start that was killed may have lost
its last records (W&B writes in blocks); the resumed start logs them again (`trainer/train/tracking.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.compare.run import CompareError, Run, Series, flatten

RUN_LOG = "run-*.wandb"
NUMBERS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}  # as leet writes them
CONFIG_OF_WANDB = "_wandb"


@dataclass
class Session:
    """One start of a W&B run: one `offline-run-*` folder."""

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    tags: tuple[str, ...] = ()
    started: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    series: Series = field(default_factory=dict)
    runtime_s: float = 0.0
    exit_code: int | None = None


def is_wandb_run(path: Path) -> bool:
    return path.is_dir() and any(path.glob(RUN_LOG))


def wandb_runs_in(path: Path) -> list[Path]:
    """The run folders of a `wandb/` folder (not `latest-run`, a link to one of them)."""
    return sorted(child for child in path.iterdir() if not child.is_symlink() and is_wandb_run(child))


def records(run_dir: Path) -> list[dict[str, Any]]:
    log = sorted(run_dir.glob(RUN_LOG))[-1]
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=run_dir, timeout=300)
    if done.returncode != 0:
        why = done.stderr.strip()[-500:]
        raise CompareError(f"{log}: `wandb leet inspect --json` failed ({done.returncode}): {why}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def number(value: Any) -> float | None:
    if isinstance(value, str):
        return NUMBERS.get(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def add_history(session: Session, history: dict[str, Any]) -> None:
    item = history.get("item", {})
    step = int(history.get("step", {}).get("num", item.get("_step", 0)))
    session.runtime_s = max(session.runtime_s, number(item.get("_runtime")) or 0.0)
    for name, value in item.items():
        value = number(value)
        if value is not None and not name.startswith("_"):
            session.series.setdefault(name, {})[step] = value


def add_run(session: Session, run: dict[str, Any]) -> None:
    session.run_id = run.get("run_id", "")
    session.name = run.get("display_name", "")
    session.group = run.get("run_group", "")
    session.tags = tuple(run.get("tags", ()))
    session.started = run.get("start_time", "")
    session.config.update(run.get("config", {}).get("update", {}))


def read_session(run_dir: Path) -> Session:
    session = Session(run_dir)
    for record in records(run_dir):
        kind = record.get("type")
        if kind == "run":
            add_run(session, record["run"])
        elif kind == "config":
            session.config.update(record["config"].get("update", {}))
        elif kind == "history":
            add_history(session, record["history"])
        elif kind == "exit":
            session.exit_code = int(record["exit"].get("exit_code", 0))
    if not session.run_id:  # a start killed before W&B wrote anything but the header
        session.run_id = sorted(run_dir.glob(RUN_LOG))[-1].name.removeprefix("run-").removesuffix(".wandb")
    return session


def state(session: Session) -> str:
    if session.exit_code is None:
        return "unfinished"
    return "finished" if session.exit_code == 0 else "failed"


def merged(sessions: list[Session]) -> Run:
    """The sessions of one run id, in the order they started, as one run."""
    sessions = sorted(sessions, key=lambda session: (session.started, session.path.name))
    config: dict[str, Any] = {}
    series: Series = {}
    for session in sessions:
        config.update(session.config)
        for name, values in session.series.items():
            series.setdefault(name, {}).update(values)
    config.pop(CONFIG_OF_WANDB, None)
    last = sessions[-1]
    return Run(
        name=last.name or last.run_id,
        source=", ".join(str(session.path) for session in sessions),
        config=flatten(config),
        series=series,
        state=state(last),
        group=last.group,
        run_id=last.run_id,
        tags=last.tags,
        wall_time_s=sum(session.runtime_s for session in sessions),
    )


def read_wandb_runs(run_dirs: list[Path]) -> list[Run]:
    """One run per run id among these W&B run folders (a folder given twice is read once)."""
    by_id: dict[str, list[Session]] = {}
    for run_dir in dict.fromkeys(path.resolve() for path in run_dirs):
        session = read_session(run_dir)
        by_id.setdefault(session.run_id, []).append(session)
    return [merged(sessions) for sessions in by_id.values()]
