"""Metrics, rank 0 only: `metrics.jsonl` always, Weights & Biases when enabled, a console line with ETA.

Other ranks get a tracker that does nothing, so calling code never branches on the rank.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from typing import Any

from trainer.config.schema import TrackingSection
from trainer.run_folder import RunFolder

log = logging.getLogger("shardtune")
PARTS = (("loss_ce", "ce"), ("loss_consistency", "consistency"), ("accuracy", "acc"))  # the choice objective's


class Tracker:
    def __init__(
        self, run: RunFolder, section: TrackingSection, config: dict[str, Any], total_steps: int, fresh: bool = True
    ):
        self.run = run
        self.total_steps = total_steps
        self.started = time.monotonic()
        self.first_step: int | None = None
        # a fresh run starts the file over; a resumed one continues it
        self.metrics_file = open(  # noqa: SIM115 -- open for the run, closed by close()
            run.metrics, "w" if fresh else "a", encoding="utf-8"
        )
        self.wandb_run = start_wandb(run, section, config) if section.wandb != "disabled" else None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, **{k: to_number(v) for k, v in metrics.items()}}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if "train/loss" in metrics:
            log.info(self.progress_line(record, step))

    def progress_line(self, record: dict[str, Any], step: int) -> str:
        if self.first_step is None:
            self.first_step, self.started = step, time.monotonic()
        done = step - self.first_step
        rate = done / max(1e-9, time.monotonic() - self.started)
        eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        parts = " ".join(f"{name} {record[f'train/{key}']:.4f}" for key, name in PARTS if f"train/{key}" in record)
        return (
            f"step {step}/{self.total_steps} loss {record['train/loss']:.4f} {parts + ' ' if parts else ''}"
            f"lr {record.get('train/lr', 0):.2e} {record.get('perf/samples_per_s', 0):.1f} samples/s ETA {eta_text}"
        )

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for key, value in values.items():
                self.wandb_run.summary[key] = to_number(value)

    def close(self) -> None:
        self.metrics_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class NullTracker:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def make_tracker(
    is_main: bool,
    run: RunFolder,
    section: TrackingSection,
    config: dict[str, Any],
    total_steps: int,
    fresh: bool = True,
):
    return Tracker(run, section, config, total_steps, fresh) if is_main else NullTracker()


def to_number(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def start_wandb(run: RunFolder, section: TrackingSection, config: dict[str, Any]):
    """One W&B run per job: the id is kept in the run folder, so a resumed job continues the same run."""
    import wandb

    if section.api_key and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_API_KEY"] = section.api_key
    id_file = run.wandb_id
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(8)
    id_file.write_text(run_id)
    return wandb.init(
        mode=section.wandb,
        project=section.project,
        group=section.group or None,
        name=section.name or run.root.name,
        tags=list(section.tags),
        config=config,
        dir=str(run.root),
        id=run_id,
        resume="allow",
    )
