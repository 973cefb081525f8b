"""The run folder's layout, in one place: the trainer writes it, export, predict, evaluate and SLURM read it.

    {run}/config.resolved.json          the resolved (redacted) training config
    {run}/metrics.jsonl                 one line per logged step (rank 0)
    {run}/train_summary.json            what the finished run reports
    {run}/history.png                   loss, learning rate, eval metrics and grad norm by step (rank 0, at the end)
    {run}/wandb_run_id.txt              the W&B run a resumed job continues
    {run}/audit/                        gradient audit tables and plots (`train.audit_every`, rank 0)
    {run}/memory/rank{r}.json           measured peak memory by phase (`trainer.testing.memory_probe`, when on)
    {run}/checkpoints/latest            names the newest complete checkpoint, replaced atomically
    {run}/checkpoints/best.json         the best checkpoint by `checkpoint.best_metric`
    {run}/checkpoints/step00000100/     DeepSpeed's files, trainer_state.json, trainer_state_rank{r}.pt,
                                        adapter/ (PEFT, with a copy of the run config), then `complete`

A checkpoint is named the same way everywhere (`--checkpoint` of export, evaluate and predict,
`checkpoint.resume`, k-fold evaluation): `resolve_checkpoint` reads `RUN:best`, `RUN:latest` and a bare RUN.

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
HISTORY = "history.png"
CHECKPOINTS = "checkpoints"
AUDIT = "audit"
MEMORY = "memory"
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
    def history(self) -> Path:
        return self.root / HISTORY

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
    def memory(self) -> Path:
        return self.root / MEMORY

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


class CheckpointError(ValueError):
    """A named checkpoint that cannot be used; the message names the run and why."""


SELECTORS = ("best", "latest")


def resolve_checkpoint(text: str | Path) -> Path:
    """The folder a checkpoint name means: `RUN:best` (the tag in best.json), `RUN:latest` or a bare run folder
    (the tag in checkpoints/latest); any other path (a checkpoint or adapter folder) as it is. A path may hold a
    ':', so only a trailing `:best` / `:latest` selects, and only when the whole text is no existing path."""
    path = Path(text)
    run, _, which = str(text).rpartition(":")
    if which in SELECTORS and run and not path.exists():
        return selected(RunFolder(Path(run)), which)
    if (path / CHECKPOINTS / LATEST).exists():
        return selected(RunFolder(path), LATEST)
    return path


def selected(run: RunFolder, which: str) -> Path:
    """The complete checkpoint that `best.json` or `latest` of `run` names."""
    if not run.checkpoints.is_dir():
        why = f"is not a run folder (no {CHECKPOINTS}/)" if run.root.is_dir() else "does not exist"
        raise CheckpointError(f"run {run.root} {why}")
    if which == "best":
        named, best = f"{CHECKPOINTS}/{BEST}", run.best()
        if best is None:
            raise CheckpointError(
                f"run {run.root} has no best checkpoint: checkpoint.best_metric was not set or never evaluated "
                f"(no {named})"
            )
        tag = best["tag"]
    else:
        named, tag = f"{CHECKPOINTS}/{LATEST}", run.latest_tag()
        if not tag:
            raise CheckpointError(f"run {run.root} has no latest checkpoint: none was completed (no {named})")
    checkpoint = run.checkpoint(tag)
    if not checkpoint.is_complete:
        why = "incomplete (no complete marker)" if checkpoint.path.is_dir() else "missing"
        raise CheckpointError(f"run {run.root}: {named} names {tag}, which is {why}")
    return checkpoint.path
