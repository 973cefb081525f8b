"""What `compare.json` holds, and `compare.md` shows: a row per run, the config keys whose values differ, and each
group's mean ± std.

Config keys left out of the differing ones, as they differ from run to run by design: `train.output_dir`,
`tracking.name`, `tracking.group` (the group has its own column), and the `job.*` section the trainer adds to W&B
configs (nodes, GPUs, SLURM ids; `trainer/train/tracking.py`).
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from trainer.compare.run import Run, best, final, scored_metrics
from trainer.compare.select import groups

IGNORED_KEYS = ("train.output_dir", "tracking.name", "tracking.group")
IGNORED_PREFIXES = ("job.",)
MISSING = "—"
COUNTS = ("steps", "samples", "tokens", "samples_per_s", "tokens_per_s", "train_time_s", "wall_time_s")


def ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def comparable(value: Any) -> str:
    """A config value as text for comparing: 1 and 1.0 alike (W&B's files write whole floats as integers)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = float(value)
    return json.dumps(value, sort_keys=True)


def differing_keys(runs: list[Run]) -> list[str]:
    """Dotted config keys whose values are not the same in every run (a key some runs lack counts)."""
    keys = sorted({key for run in runs for key in run.config if not ignored(key)})
    return [key for key in keys if len({comparable(run.config.get(key, MISSING)) for run in runs}) > 1]


def progress(run: Run) -> dict[str, Any]:
    samples, tokens, train_time = run.samples_seen(), run.tokens_seen(), run.train_time_s()
    total_samples = samples[max(samples)] if samples else None
    total_tokens = tokens[max(tokens)] if tokens else None
    return {
        "steps": run.steps,
        "samples": round(total_samples) if total_samples is not None else None,
        "tokens": round(total_tokens) if total_tokens is not None else None,
        "samples_per_s": total_samples / train_time if total_samples is not None and train_time else None,
        "tokens_per_s": total_tokens / train_time if total_tokens is not None and train_time else None,
        "train_time_s": train_time,
        "wall_time_s": run.wall_time(),
    }


def run_row(run: Run, keys: list[str]) -> dict[str, Any]:
    metrics = scored_metrics(run.series)
    return {
        "name": run.name,
        "source": run.source,
        "group": run.group,
        "state": run.state,
        "run_id": run.run_id,
        "config": {key: run.config.get(key, MISSING) for key in keys},
        **progress(run),
        "final": {metric: final(run.series[metric]) for metric in metrics},
        "best": {metric: dict(zip(("step", "value"), best(metric, run.series[metric]))) for metric in metrics},
    }


def spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1; null for one value), as `launch/aggregate.py` gives them."""
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def group_numbers(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Column → the values the group's runs have for it: counts, then `final/METRIC`, `best/METRIC`."""
    columns: dict[str, list[float]] = {name: [] for name in COUNTS}
    for row in rows:
        values = {name: row[name] for name in COUNTS}
        values |= {f"final/{metric}": value for metric, value in row["final"].items()}
        values |= {f"best/{metric}": chosen["value"] for metric, chosen in row["best"].items()}
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                columns.setdefault(name, []).append(value)
    return {name: values for name, values in columns.items() if values}


def group_row(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "group": name,
        "runs": [row["name"] for row in rows],
        "stats": {column: spread(values) for column, values in group_numbers(rows).items()},
    }


def jsonable(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def build_report(runs: list[Run]) -> dict[str, Any]:
    keys = differing_keys(runs)
    rows = {run.name: run_row(run, keys) for run in runs}
    return {
        "runs": list(rows.values()),
        "differing_keys": keys,
        "ignored_keys": [*IGNORED_KEYS, *(f"{prefix}*" for prefix in IGNORED_PREFIXES)],
        "groups": [group_row(name, [rows[run.name] for run in members]) for name, members in groups(runs).items()],
    }
