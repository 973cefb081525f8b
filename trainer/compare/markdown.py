"""`compare.md`: the report of `trainer/compare/report.py` as markdown tables, with the curve figures linked."""

from __future__ import annotations

import json
import math
from typing import Any

from trainer.compare.report import MISSING

RUN_COUNTS = (
    ("steps", "steps"),
    ("samples", "samples"),
    ("tokens", "tokens"),
    ("samples_per_s", "samples/s"),
    ("tokens_per_s", "tokens/s"),
    ("train_time_s", "train time"),
    ("wall_time_s", "wall time"),
)
GROUP_COUNTS = ("steps", "samples", "tokens_per_s", "wall_time_s")
DURATIONS = {"train_time_s", "wall_time_s"}


def number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def setting(value: Any) -> str:
    """A config value: numbers as `number` shows floats (1e-4, not 0.0001), anything else as written."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def cell(column: str, value: Any) -> str:
    return duration(value) if column in DURATIONS else number(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *map(line, rows)]


def metrics_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(metric for row in rows for metric in row["final"]))


def metric_cell(row: dict[str, Any], metric: str) -> str:
    if metric not in row["final"]:
        return MISSING
    chosen = row["best"][metric]
    return f"{number(row['final'][metric])} · best {number(chosen['value'])} @{chosen['step']}"


def runs_table(report: dict[str, Any]) -> list[str]:
    rows, keys = report["runs"], report["differing_keys"]
    metrics = metrics_of(rows)
    header = ["run", "group", "state", *keys, *(title for _, title in RUN_COUNTS), *metrics]
    body = [
        [
            row["name"],
            row["group"] or MISSING,
            row["state"],
            *(setting(row["config"][key]) for key in keys),
            *(cell(column, row[column]) for column, _ in RUN_COUNTS),
            *(metric_cell(row, metric) for metric in metrics),
        ]
        for row in rows
    ]
    return table(header, body)


def spread_cell(column: str, spread: dict[str, Any] | None) -> str:
    if spread is None:
        return MISSING
    mean = cell(column, spread["mean"])
    return mean if spread["std"] is None else f"{mean} ± {cell(column, spread['std'])}"


def groups_table(report: dict[str, Any]) -> list[str]:
    metrics = metrics_of(report["runs"])
    columns = [*GROUP_COUNTS, *(f"{which}/{metric}" for metric in metrics for which in ("final", "best"))]
    titles = dict(RUN_COUNTS)
    header = ["group", "runs", *(titles.get(column, column) for column in columns)]
    body = [
        [group["group"], str(len(group["runs"])), *(spread_cell(c, group["stats"].get(c)) for c in columns)]
        for group in report["groups"]
    ]
    return table(header, body)


def markdown(report: dict[str, Any], figures: list[str]) -> str:
    keys = ", ".join(f"`{key}`" for key in report["differing_keys"]) or "none"
    lines = [
        f"# Comparison of {len(report['runs'])} run{'s' * (len(report['runs']) != 1)}",
        "",
        f"Config keys that differ: {keys}. Not compared (they differ per run by design): "
        + ", ".join(f"`{key}`" for key in report["ignored_keys"])
        + ".",
        "",
        "Metrics: the final value · the best (lowest loss, highest anything else) @ its step.",
        "",
        *runs_table(report),
    ]
    if report["groups"]:
        lines += ["", "## Groups", "", "Mean ± sample standard deviation (n − 1) over each group's runs.", ""]
        lines += groups_table(report)
    if figures:
        lines += ["", "## Curves", "", *(f"![{figure}]({figure})" for figure in figures)]
    return "\n".join(lines) + "\n"
