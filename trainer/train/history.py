"""`{run}/history.png`, drawn from `metrics.jsonl`: loss (and the objective's parts), learning rate, eval metrics
and grad norm, one panel each over a shared step axis. Rank 0 draws it at the end of every run; to redraw one:

    python -m trainer.train.history RUN

Drawn on matplotlib's Agg canvas through `Figure` alone, so no pyplot state or display backend is involved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.run_folder import RunFolder

# (panel title, the metrics it draws: exact names, or a prefix ending in "/")
PANELS = (
    ("loss", ("train/loss", "train/loss_ce", "train/loss_consistency")),
    ("learning rate", ("train/lr/",)),
    ("eval loss", ("eval/loss",)),
    ("eval metrics", ("eval/",)),
    ("grad norm", ("train/grad_norm",)),
)
NOT_DRAWN = {"eval/loss", "eval/samples"}  # eval/loss has its own panel; the sample count is no metric


def read_series(metrics: Path) -> dict[str, dict[int, float]]:
    """name → step → value; a resumed run re-logs the steps after its checkpoint, and the last value wins."""
    series: dict[str, dict[int, float]] = {}
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        step = record.pop("step")
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(name, {})[step] = value
    return series


def panel_names(series: dict[str, dict[int, float]], patterns: tuple[str, ...]) -> list[str]:
    names = []
    for pattern in patterns:
        if pattern.endswith("/"):
            names += sorted(n for n in series if n.startswith(pattern) and n not in NOT_DRAWN and n not in names)
        elif pattern in series:
            names.append(pattern)
    return names


def panels(series: dict[str, dict[int, float]]) -> list[tuple[str, list[str]]]:
    """(title, metric names) of the panels with something to draw."""
    chosen = []
    for title, patterns in PANELS:
        names = panel_names(series, patterns)
        if not names and title == "learning rate" and "train/lr" in series:  # a run without per-group rates
            names = ["train/lr"]
        if names:
            chosen.append((title, names))
    return chosen


def plot_history(run: RunFolder) -> Path | None:
    """Draws `run.history` from `run.metrics`; None (nothing written) when no metrics were logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series = read_series(run.metrics) if run.metrics.exists() else {}
    drawn = panels(series)
    if not drawn:
        return None
    figure = Figure(figsize=(9, 2.4 * len(drawn)), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(drawn), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, names) in zip(axes, drawn):
        for name in names:
            steps = sorted(series[name])
            ax.plot(steps, [series[name][s] for s in steps], marker="o" if len(steps) < 30 else None, label=name)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.savefig(run.history, dpi=100)
    return run.history


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m trainer.train.history RUN", file=sys.stderr)
        return 2
    run = RunFolder(Path(arguments[0]))
    if not run.metrics.exists():
        print(f"error: {run.root}: no {run.metrics.name} (not a run folder, or nothing logged yet)", file=sys.stderr)
        return 2
    path = plot_history(run)
    if path is None:
        print(f"error: {run.metrics}: no metrics to draw", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
