"""The gradient-flow figure of an audited step: mean |grad| per layer, in model order.

Drawn on matplotlib's Agg canvas through `Figure` alone, so no pyplot state or display backend is involved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def layer_label(row: dict[str, Any]) -> str:
    return row["part"] if row["layer"] is None else f"{row['part']}.{row['layer']}"


def layer_means(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Mean |grad| per part and layer index, weighted by parameter size; parameters outside numbered layers
    (embeddings, projector, head) count per part. Parameters without a gradient are left out."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        if math.isfinite(row["mean_abs_grad"]):
            total = sums.setdefault(layer_label(row), [0.0, 0])
            total[0] += row["mean_abs_grad"] * row["numel"]
            total[1] += row["numel"]
    return [(label, total / count if count else 0.0) for label, (total, count) in sums.items()]


def plot_gradient_flow(rows: list[dict[str, Any]], path: Path, step: int) -> None:
    from matplotlib.figure import Figure

    means = layer_means(rows)
    values = [value for _, value in means]
    positive = [value for value in values if value > 0]
    floor = min(positive) / 10 if positive else 1e-12  # a zero gradient still gets a (red) bar on the log axis
    figure = Figure(figsize=(max(6.0, 0.35 * len(means)), 4.5), layout="tight")
    axes = figure.subplots()
    axes.bar(
        range(len(values)),
        [value if value > 0 else floor for value in values],
        color=["tab:blue" if value > 0 else "tab:red" for value in values],
    )
    axes.set_yscale("log")
    axes.set_xticks(range(len(means)), [label for label, _ in means], rotation=90, fontsize=7)
    axes.set_ylabel("mean |grad|")
    axes.set_title(f"gradient flow at step {step} (red: zero gradient)")
    figure.savefig(path, dpi=100)
