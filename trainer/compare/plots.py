"""The runs' curves overlaid: `curves_by_step.png` and `curves_by_samples.png`, a panel per metric (training loss,
evaluation loss and metrics, learning rate, grad norm, tokens/s). A group is drawn as its mean with a ± std band
(at each step, over the group's runs that logged it; against samples, at the mean samples seen by that step);
ungrouped runs as themselves. Drawn on matplotlib's Agg canvas, as `trainer/train/history.py` is."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from trainer.compare.run import NOT_SCORED, Run, at_steps

FIRST = ("train/loss", "eval/loss")
LAST = ("train/lr", "train/grad_norm", "perf/tokens_per_s")
FIGURES = (("step", "curves_by_step.png"), ("samples seen", "curves_by_samples.png"))


@dataclass
class Curve:
    label: str
    values: dict[int, float]  # step → value (a group's mean)
    samples: dict[int, float]  # step → samples seen by then (a group's mean); empty where unknown
    std: dict[int, float] | None = None  # a group's, by step


def panel_metrics(runs: list[Run]) -> list[str]:
    present = {name for run in runs for name in run.series}
    evaluated = sorted(n for n in present if n.startswith("eval/") and n not in FIRST and n not in NOT_SCORED)
    return [name for name in (*FIRST, *evaluated, *LAST) if name in present]


def samples_by_step(run: Run, values: dict[int, float]) -> dict[int, float]:
    seen = run.samples_seen()
    return dict(zip(sorted(values), at_steps(seen, sorted(values)))) if seen else {}


def run_curve(run: Run, metric: str) -> Curve:
    values = run.series[metric]
    return Curve(run.name, values, samples_by_step(run, values))


def mean_by_step(per_run: list[dict[int, float]]) -> tuple[dict[int, float], dict[int, float]]:
    steps = sorted({step for values in per_run for step in values})
    at = {step: [values[step] for values in per_run if step in values] for step in steps}
    return (
        {step: statistics.fmean(found) for step, found in at.items()},
        {step: statistics.stdev(found) if len(found) > 1 else 0.0 for step, found in at.items()},
    )


def group_curve(name: str, runs: list[Run], metric: str) -> Curve:
    logged = [run for run in runs if metric in run.series]
    mean, std = mean_by_step([run.series[metric] for run in logged])
    samples = [samples_by_step(run, run.series[metric]) for run in logged]
    samples_mean = mean_by_step([s for s in samples if s])[0] if all(samples) else {}
    return Curve(f"{name} (mean ± std, {len(logged)} runs)", mean, samples_mean, std)


def curves(metric: str, runs: list[Run], groups: dict[str, list[Run]]) -> list[Curve]:
    grouped = {id(run) for members in groups.values() for run in members}
    drawn = [group_curve(name, members, metric) for name, members in groups.items()]
    drawn = [curve for curve in drawn if curve.values]
    return drawn + [run_curve(run, metric) for run in runs if id(run) not in grouped and metric in run.series]


def draw(ax, curve: Curve, by_samples: bool) -> None:
    steps = [step for step in sorted(curve.values) if not by_samples or step in curve.samples]
    xs = [curve.samples[step] if by_samples else step for step in steps]
    ys = [curve.values[step] for step in steps]
    (line,) = ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=curve.label)
    if curve.std is not None:
        low = [y - curve.std[step] for y, step in zip(ys, steps)]
        high = [y + curve.std[step] for y, step in zip(ys, steps)]
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_figure(panels: dict[str, list[Curve]], x_label: str, path: Path) -> dict[str, list[str]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    by_samples = x_label != "step"
    shown = {metric: [c for c in drawn if not by_samples or c.samples] for metric, drawn in panels.items()}
    shown = {metric: drawn for metric, drawn in shown.items() if drawn}
    if not shown:
        return {}
    rows = (len(shown) + 1) // 2
    figure = Figure(figsize=(12, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 2, squeeze=False).ravel()
    for ax, (metric, drawn) in zip(axes, shown.items()):
        for curve in drawn:
            draw(ax, curve, by_samples)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    figure.savefig(path, dpi=100)
    return {metric: [curve.label for curve in drawn] for metric, drawn in shown.items()}


def plot_curves(runs: list[Run], groups: dict[str, list[Run]], out: Path) -> dict[str, dict[str, list[str]]]:
    """Writes the figures into `out`; returns, for each figure written, what each panel draws."""
    panels = {metric: curves(metric, runs, groups) for metric in panel_metrics(runs)}
    written = {}
    for x_label, name in FIGURES:
        drawn = plot_figure(panels, x_label, out / name)
        if drawn:
            written[name] = drawn
    return written
