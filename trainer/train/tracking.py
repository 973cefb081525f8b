"""Metrics, rank 0 only: `metrics.jsonl` always, Weights & Biases when enabled, and on the console a progress bar
(ETA, loss, tokens/s) when stderr is a terminal, else a line per logged step with ETA (SLURM logs stay readable).

Other ranks get a tracker that does nothing, so calling code never branches on the rank. Every line carries
`perf/wall_time_s`, the seconds since the run's tracker started, continued across resumes (the time between a kill
and its resume is not counted). The W&B run config is the resolved config plus `job`: world size, nodes, GPUs per
node, host and the SLURM ids (`job.slurm.*`, updated when a requeued job resumes the same run).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from trainer.config.schema import TrackingSection
from trainer.progress import StepBar, on_terminal
from trainer.run_folder import RunFolder

log = logging.getLogger("shardtune")
PARTS = (("loss_ce", "ce"), ("loss_consistency", "consistency"), ("accuracy", "acc"))  # the choice objective's
WALL_TIME = "perf/wall_time_s"
SLURM_IDS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "job_name": "SLURM_JOB_NAME",
    "partition": "SLURM_JOB_PARTITION",
    "nodelist": "SLURM_JOB_NODELIST",
}


class Tracker:
    def __init__(
        self, run: RunFolder, section: TrackingSection, config: dict[str, Any], total_steps: int, fresh: bool = True
    ):
        self.run = run
        self.total_steps = total_steps
        self.started = self.opened = time.monotonic()
        self.wall_offset = 0.0 if fresh else logged_wall_time(run.metrics)
        self.first_step: int | None = None
        self.bar = StepBar(total_steps, 0 if fresh else logged_step(run.metrics)) if on_terminal() else None
        # a fresh run starts the file over; a resumed one continues it
        self.metrics_file = open(  # noqa: SIM115 -- open for the run, closed by close()
            run.metrics, "w" if fresh else "a", encoding="utf-8"
        )
        self.wandb_run = start_wandb(run, section, config) if section.wandb != "disabled" else None
        if self.wandb_run is not None and not fresh:
            backfill(self.wandb_run, run)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, **{k: to_number(v) for k, v in metrics.items()}}
        record[WALL_TIME] = round(self.wall_offset + time.monotonic() - self.opened, 3)
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if "train/loss" not in metrics:
            return
        if self.bar is not None:
            self.bar.update(step, record)
        else:
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
        if self.bar is not None:
            self.bar.close()
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


def logged_lines(metrics: Path) -> list[dict[str, Any]]:
    lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.exists() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
    return records


def logged_step(metrics: Path) -> int:
    return max((line["step"] for line in logged_lines(metrics) if "step" in line), default=0)


def logged_wall_time(metrics: Path) -> float:
    """The last `perf/wall_time_s` a run logged (0 where none): where a resumed run's clock continues."""
    return max((line[WALL_TIME] for line in logged_lines(metrics) if WALL_TIME in line), default=0.0)


def backfill(wandb_run, run: RunFolder) -> None:
    """A resumed run's lines its W&B run lacks, logged again: a killed job loses what W&B had not yet written.
    Online that is from the server's next step on; offline, where every start is a file of its own, everything.
    Only up to the checkpoint resumed from: the run logs the steps after it again itself."""
    latest = run.latest()
    resumed = json.loads(latest.trainer_state.read_text())["step"] if latest and latest.is_complete else 0
    first = wandb_run.step
    for record in logged_lines(run.metrics):
        step = record.pop("step", None)
        if step is not None and first <= step <= resumed:
            wandb_run.log(record, step=step)


def gpus_per_node(env: dict[str, str]) -> int:
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def job_context(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Where this job runs, for the W&B run config: the launcher's world, the node count and SLURM's ids."""
    env = dict(os.environ if env is None else env)
    world = int(env.get("WORLD_SIZE") or 1)
    per_node = int(env.get("LOCAL_WORLD_SIZE") or world)
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or max(1, world // max(1, per_node))
    context = {
        "world_size": world,
        "nodes": int(nodes),
        "gpus_per_node": gpus_per_node(env),
        "host": socket.gethostname(),
    }
    slurm = {name: env[variable] for name, variable in SLURM_IDS.items() if env.get(variable)}
    return {**context, "slurm": slurm} if slurm else context


def default_group(section: TrackingSection) -> str | None:
    """`tracking.group`, else the SLURM array a job belongs to (its folds or grid cells), else none."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return section.group or (f"slurm-array-{array}" if array else None)


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
        group=default_group(section),
        name=section.name or run.root.name,
        tags=list(section.tags),
        config={**config, "job": job_context()},
        dir=str(run.root),
        id=run_id,
        resume="allow",
    )
