"""What a metrics line reports: sums over the micro-steps since the last line, reduced once across ranks."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from trainer.train.state import TrainerState


def new_window(started: float | None = None) -> dict[str, Any]:
    """Sums over the micro-steps since the last metrics line, for the next one."""
    return {
        "parts": {},
        "loss": 0.0,
        "micro": 0,
        "steps": 0,
        "tokens": 0,
        "slots": 0,
        "samples": 0,
        "paused": 0.0,
        "started": time.perf_counter() if started is None else started,
    }


def new_pending() -> dict[str, Any]:
    """The micro-steps of the optimizer step under way."""
    return {"losses": [], "parts": {}, "tokens": 0, "slots": 0, "samples": 0}


def commit(window: dict[str, Any], pending: dict[str, Any]) -> None:
    """An applied optimizer step's micro-steps join the window."""
    window["loss"] += float(torch.stack(pending["losses"]).sum())
    window["micro"] += len(pending["losses"])
    for name, values in pending["parts"].items():
        window["parts"][name] = window["parts"].get(name, 0.0) + float(torch.stack(values).sum())
    for key in ("tokens", "slots", "samples"):
        window[key] += pending[key]


def step_metrics(
    window: dict[str, Any], ended: float, engine, state: TrainerState, world_size: int, parts: tuple[str, ...] = ()
) -> dict[str, float]:
    """Means over the optimizer steps since the last metrics line; one all-reduce per line. Each rank's `loss` is
    its share of the steps' mean losses (summed over ranks: the steps' losses, each a mean over all its units).
    `parts` are the objective's loss parts, means over micro-batches, named alike on every rank (a rank whose
    micro-batches were all empty has none)."""
    micro = max(1, window["micro"])
    means = [window["loss"] / max(1, window["steps"])] + [window["parts"].get(name, 0.0) / micro for name in parts]
    totals = torch.tensor(
        [window["tokens"], window["samples"], window["slots"], *means], dtype=torch.float64, device=engine.device
    )
    if dist.is_initialized():
        dist.all_reduce(totals)
    elapsed = ended - window["started"] - window["paused"]
    metrics = {
        "train/loss": float(totals[3]),
        **{f"train/{name}": float(value) / world_size for name, value in zip(parts, totals[4:])},
        "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
        "train/epoch": state.epoch,
        "train/skipped_steps": state.skipped_steps,
        "train/dropped_samples": state.dropped_samples,
        "perf/step_time_s": elapsed / window["steps"],
        "perf/tokens_per_s": float(totals[0]) / elapsed,
        "perf/samples_per_s": float(totals[1]) / elapsed,
        "perf/nonpad_fraction": float(totals[0] / totals[2]) if totals[2] > 0 else 0.0,
    }
    metrics.update(memory_metrics())
    return metrics


def learning_rates(group_names: list[str], lrs: list[float]) -> dict[str, float]:
    """`train/lr` is the language model's (LoRA's) rate, whatever the group order; each group's under its name."""
    rates = dict(zip(group_names, lrs))
    main = next((name for name in group_names if name.startswith("language")), group_names[0])
    return {"train/lr": rates[main], **{f"train/lr/{name}": lr for name, lr in rates.items()}}


def memory_metrics() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"memory/max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
    import resource

    return {"memory/max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
