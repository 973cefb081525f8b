"""Pairwise metrics of an evaluation: swap consistency, and Bradley–Terry strengths fitted from the model's
predictions, against the items' true scores (report keys, bt_strengths.csv, bt_scatter.png).

The strengths come from the predictions on the pairs as stored (not the swapped ones), so they do not depend
on `--swap-check`. A pair whose prediction is not First, Second or Similar, or that compares an item with
itself, adds no comparison. An item's true score is the mean of its score over the evaluated pairs it appears
in. Correlations are over the fitted items, null when undefined (fewer than two items, or a constant side).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from trainer.evaluate import bradley_terry
from trainer.evaluate.pairwise import canonical, consistent
from trainer.evaluate.scores import Outcome, mean

BT_PRIOR = 1.0
BT_FIT = (
    f"Bradley–Terry by MM on the predicted outcomes, Similar as half a win each way, every item with {BT_PRIOR:g} "
    "virtual Similar against a reference of log-strength 0; strengths are natural-log"
)


@dataclass
class ItemTable:
    """Per fitted item: its log-strength, mean true score and number of comparisons."""

    items: list[str]
    strengths: list[float]
    true_scores: list[float]
    comparisons: list[int]


def predicted_outcomes(pairs: list[Outcome]) -> list[tuple[str, str, str]]:
    predicted = [(o.pair.items, canonical(o.prediction)) for o in pairs]
    return [(a, b, result) for (a, b), result in predicted if result is not None and a != b]


def true_scores(pairs: list[Outcome]) -> dict[str, float]:
    seen: dict[str, list[float]] = {}
    for o in pairs:
        for item, score in zip(o.pair.items, o.pair.scores):
            seen.setdefault(item, []).append(score)
    return {item: sum(scores) / len(scores) for item, scores in seen.items()}


def item_table(pairs: list[Outcome]) -> ItemTable:
    fitted = bradley_terry.fit(predicted_outcomes(pairs), prior=BT_PRIOR)
    truth = true_scores(pairs)
    return ItemTable(
        fitted.items, fitted.log_strengths.tolist(), [truth[item] for item in fitted.items], fitted.comparisons.tolist()
    )


def correlation(function, table: ItemTable) -> float | None:
    if len(table.items) < 2:
        return None
    value = function(table.strengths, table.true_scores)
    return value if math.isfinite(value) else None


def pairwise_summary(outcomes: list[Outcome]) -> tuple[dict, ItemTable | None]:
    """Report keys for the pair samples among `outcomes` (none when there are none), and the item table."""
    pairs = [o for o in outcomes if o.pair is not None]
    if not pairs:
        return {}, None
    summary: dict = {"num_pairs": len(pairs)}
    checked = [o for o in pairs if o.pair.swapped_choice is not None]
    if checked:
        summary["swap_consistency"] = mean(consistent(o.prediction, o.pair.swapped_choice) for o in checked)
        summary["num_swap_checked"] = len(checked)
    table = item_table(pairs)
    summary.update(
        bt_pearson=correlation(bradley_terry.pearson, table),
        bt_spearman=correlation(bradley_terry.spearman, table),
        bt_items=len(table.items),
        bt_comparisons=sum(table.comparisons) // 2,  # each counted for both its items
        bt_fit=BT_FIT,
    )
    return summary, table


def write_strengths_csv(path: Path, table: ItemTable) -> None:
    """Strongest first (ties by item name)."""
    rows = sorted(zip(table.items, table.strengths, table.true_scores, table.comparisons), key=lambda r: (-r[1], r[0]))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item", "strength", "true_score", "comparisons"])
        writer.writerows(rows)


def plot_strengths(path: Path, table: ItemTable, report: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.scatter(table.true_scores, table.strengths, s=12, alpha=0.7)
    axes.set_xlabel("true score (mean over its pairs)")
    axes.set_ylabel("Bradley–Terry log-strength (from predictions)")
    axes.set_title(
        f"{len(table.items)} items: Pearson {number(report['bt_pearson'])}, Spearman {number(report['bt_spearman'])}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def write_pair_files(out: Path, report: dict, table: ItemTable) -> None:
    write_strengths_csv(out / "bt_strengths.csv", table)
    plot_strengths(out / "bt_scatter.png", table, report)


def pairs_markdown(report: dict) -> list[str]:
    """The report.md section on pairs; empty without pair samples."""
    if "num_pairs" not in report:
        return []
    checked = report.get("num_swap_checked", 0)
    lines = [
        "## Pairs",
        "",
        f"{report['num_pairs']} pairs, {checked} also scored with the images swapped. {report['bt_fit']}.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("swap_consistency", "bt_pearson", "bt_spearman"):
        if key in report:
            lines.append(f"| {key} | {number(report[key])} |")
    lines += [f"| bt_items | {report['bt_items']} |", f"| bt_comparisons | {report['bt_comparisons']} |"]
    lines += ["", "![strength vs true score](bt_scatter.png) (per item: `bt_strengths.csv`)", ""]
    return lines
