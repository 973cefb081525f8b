"""Writing an evaluation report: report.json and report.md, confusion.csv and confusion.png, predictions.jsonl;
with pair samples also bt_strengths.csv and bt_scatter.png."""

from __future__ import annotations

import csv
import html
import json
from dataclasses import asdict
from pathlib import Path

from trainer.evaluate.pair_report import ItemTable, pairs_markdown, write_pair_files
from trainer.evaluate.scores import Confusion, Outcome

PLOT_ANNOTATE_MAX = 30


def write_confusion_csv(path: Path, confusion: Confusion) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *confusion.columns])
        for name, row in zip(confusion.classes, confusion.counts):
            writer.writerow([name, *row])


def plot_confusion(path: Path, confusion: Confusion) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    side = min(4 + 0.45 * len(confusion.columns), 40)
    figure = Figure(figsize=(side + 1, side))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(confusion.counts, cmap="Blues")
    axes.set_xticks(range(len(confusion.columns)), confusion.columns, rotation=45, ha="right")
    axes.set_yticks(range(len(confusion.classes)), confusion.classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(confusion.columns) <= PLOT_ANNOTATE_MAX:
        peak = max(max(row) for row in confusion.counts)
        for row, counts in enumerate(confusion.counts):
            for column, count in enumerate(counts):
                axes.text(
                    column, row, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black"
                )
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def cell(text: str) -> str:
    return html.escape(str(text)).replace("|", "\\|").replace("\n", "<br>")


def markdown(report: dict) -> str:
    data = ", ".join(f"{key} {value}" for key, value in report["data"].items())
    lines = [
        f"# Evaluation of {report['model']['adapter'] or report['model']['model']}",
        "",
        f"Data: {data} — {report['num_samples']} samples, {report['world_size']} rank(s).",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("accuracy", "exact_match", "normalised_match", "choice_accuracy", "generation_in_choices"):
        if key in report:
            lines.append(f"| {key} | {report[key]:.4f} |")
    if "choice_accuracy" in report:
        lines += ["", f"Choices scored by {report['choice_scoring']}."]
    lines += ["", "## Per class", "", "| class | accuracy | correct | total |", "|---|---|---|---|"]
    lines += [
        f"| {cell(name)} | {row['accuracy']:.4f} | {row['correct']} | {row['total']} |"
        for name, row in report["per_class"].items()
    ]
    lines += [
        "",
        *pairs_markdown(report),
        "## Confusion matrix",
        "",
        "![confusion matrix](confusion.png) (counts: `confusion.csv`)",
        "",
        f"## Errors ({len(report['errors'])} of {report['num_errors']})",
        "",
        "| key | prompt | reference | prediction |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {cell(e['key'])} | {cell(e['prompt'])} | {cell(e['reference'])} | {cell(e['prediction'])} |"
        for e in report["errors"]
    ]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, report: dict, outcomes: list[Outcome], confusion: Confusion, items: ItemTable | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    write_confusion_csv(out / "confusion.csv", confusion)
    plot_confusion(out / "confusion.png", confusion)
    if items is not None:
        write_pair_files(out, report, items)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for o in outcomes:
            handle.write(
                json.dumps({**asdict(o), "prediction": o.prediction, "correct": o.correct}, ensure_ascii=False) + "\n"
            )
