"""The run folder's layout, in one place: the trainer writes it, export, predict, evaluate and SLURM read it.

    {run}/config.resolved.json          the resolved (redacted) training config
    {run}/metrics.jsonl                 one line per logged step (rank 0)
    {run}/train_summary.json            what the finished run reports
    {run}/wandb_run_id.txt              the W&B run a resumed job continues
    {run}/audit/                        gradient audit tables and plots (`train.audit_every`, rank 0)
    {run}/checkpoints/latest            names the newest complete checkpoint, replaced atomically
    {run}/checkpoints/best.json         the best checkpoint by `checkpoint.best_metric`
    {run}/checkpoints/step00000100/     DeepSpeed's files, trainer_state.json, trainer_state_rank{r}.pt,
                                        adapter/ (PEFT, with a copy of the run config), then `complete`

Pure pathlib, no torch: the SLURM submitter imports it on a login node.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

RUN_CONFIG = "config.resolved.json"
METRICS = "metrics.jsonl"
WANDB_ID = "wandb_run_id.txt"
SUMMARY = "train_summary.json"
CHECKPOINTS = "checkpoints"
AUDIT = "audit"
LATEST = "latest"
BEST = "best.json"
COMPLETE = "complete"
TRAINER_STATE = "trainer_state.json"
ADAPTER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def write_atomic(path: Path, text: str) -> None:
    """Readers see the old text or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder, `{run}/checkpoints/{tag}`."""

    path: Path

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.path.parents[1])

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    @property
    def trainer_state(self) -> Path:
        return self.path / TRAINER_STATE

    @property
    def is_complete(self) -> bool:
        return (self.path / COMPLETE).exists()

    def rank_state(self, rank: int) -> Path:
        return self.path / f"trainer_state_rank{rank}.pt"

    def mark_complete(self) -> None:
        (self.path / COMPLETE).write_text("")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def run_config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def wandb_id(self) -> Path:
        return self.root / WANDB_ID

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def audit(self) -> Path:
        return self.root / AUDIT

    @property
    def best_file(self) -> Path:
        return self.checkpoints / BEST

    def checkpoint(self, tag: str) -> Checkpoint:
        return Checkpoint(self.checkpoints / tag)

    def latest_tag(self) -> str | None:
        path = self.checkpoints / LATEST
        return path.read_text().strip() if path.exists() else None

    def latest(self) -> Checkpoint | None:
        tag = self.latest_tag()
        return self.checkpoint(tag) if tag else None

    def best(self) -> dict | None:
        """{"tag", "metric", "value"} of the best checkpoint by `checkpoint.best_metric`, if one was chosen."""
        return json.loads(self.best_file.read_text()) if self.best_file.exists() else None

    def set_latest(self, tag: str) -> None:
        write_atomic(self.checkpoints / LATEST, tag)

    def read_run_config(self) -> dict:
        return json.loads(self.run_config.read_text()) if self.run_config.exists() else {}


def newest_checkpoint(path: Path) -> Path:
    """A run folder's latest checkpoint; any other path as it is."""
    latest = RunFolder(Path(path)).latest()
    return latest.path if latest else Path(path)
