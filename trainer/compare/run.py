"""One run as `shardtune-compare` sees it, whatever it was read from (a run folder, W&B files, W&B's API): its config
as dotted keys, its metric series by step, and what follows from them — steps, samples and tokens seen, throughput,
final and best values.

Samples and tokens seen are counted from the metrics lines themselves: a line's `perf/samples_per_s` ×
`perf/step_time_s` is the mean per optimizer step over the steps since the previous line (both are reduced over
all ranks), so the steps since that line times it is what those steps read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

Series = dict[str, dict[int, float]]  # metric → step → value
STEP_TIME = "perf/step_time_s"
WALL_TIME = "perf/wall_time_s"  # seconds since the run started, summed over its resumes (trainer/train/tracking.py)
NOT_SCORED = {"eval/samples"}  # a count, not a metric


class CompareError(ValueError):
    """Something given to compare that cannot be read or used; the message names the path, key or filter."""


@dataclass
class Run:
    name: str
    source: str  # the path or W&B path it was read from
    config: dict[str, Any]  # dotted keys
    series: Series
    state: str  # finished, unfinished (running, or stopped before its end), failed, or W&B's own state
    group: str = ""
    run_id: str = ""
    tags: tuple[str, ...] = ()
    wall_time_s: float | None = None  # where no perf/wall_time_s was logged: what the source says

    @property
    def steps(self) -> int:
        return max((max(values) for values in self.series.values() if values), default=0)

    def samples_seen(self) -> dict[int, float]:
        return seen(self.series, "perf/samples_per_s")

    def tokens_seen(self) -> dict[int, float]:
        return seen(self.series, "perf/tokens_per_s")

    def train_time_s(self) -> float | None:
        """The optimizer steps' own time (no evaluation, checkpoints or start-up), from the metrics lines."""
        times = self.series.get(STEP_TIME, {})
        return sum(times[step] * gap for step, gap in step_gaps(times)) if times else None

    def wall_time(self) -> float | None:
        logged = self.series.get(WALL_TIME)
        return max(logged.values()) if logged else self.wall_time_s


def step_gaps(values: dict[int, float]) -> list[tuple[int, int]]:
    """(step, steps since the previous logged step) in step order, the first counted from step 0."""
    steps = sorted(values)
    return list(zip(steps, np.diff([0, *steps]).tolist()))


def seen(series: Series, rate: str) -> dict[int, float]:
    """step → how many (samples, tokens) the run had read by that step; empty where the run logged no such rate."""
    rates, times = series.get(rate, {}), series.get(STEP_TIME, {})
    logged = {step: rates[step] * times[step] for step in rates.keys() & times.keys()}
    total, counts = 0.0, {}
    for step, gap in step_gaps(logged):
        total += logged[step] * gap
        counts[step] = total
    return counts


def at_steps(counts: dict[int, float], steps: list[int]) -> list[float]:
    """`counts` (by step) read at other steps, e.g. those of evaluation lines, by linear interpolation."""
    known = sorted(counts)
    return np.interp(steps, [0, *known], [0.0, *(counts[s] for s in known)]).tolist()


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 1e-3}} → {"optimizer.lr": 1e-3}; lists stay values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def scored_metrics(series: Series) -> list[str]:
    """The metrics the table reports final and best values of: training loss (and its parts, the choice
    objective's accuracy) and every evaluation metric."""
    train = [name for name in series if name == "train/loss" or name.startswith("train/loss_")]
    train += [name for name in series if name == "train/accuracy"]
    evaluated = [name for name in series if name.startswith("eval/") and name not in NOT_SCORED]
    return sorted(train) + sorted(evaluated, key=lambda name: (name != "eval/loss", name))


def lower_is_better(metric: str) -> bool:
    return "loss" in metric.rsplit("/", 1)[-1]


def final(values: dict[int, float]) -> float:
    return values[max(values)]


def best(metric: str, values: dict[int, float]) -> tuple[int, float]:
    """(step, value) of the lowest loss or the highest anything else; NaNs are never best."""
    finite = {step: value for step, value in values.items() if not math.isnan(value)}
    if not finite:
        return max(values), float("nan")
    chooser = min if lower_is_better(metric) else max
    step = chooser(sorted(finite), key=lambda s: finite[s])
    return step, finite[step]
