"""`launch/aggregate.py`: k-fold evaluation reports → one summary (summary.json, summary.md) with the mean and
standard deviation over folds of each headline metric the reports carry, and a row per fold.

Usage: `python launch/aggregate.py --reports runs/eval/fold*/report.json --out runs/eval/summary` (a report
folder stands for its report.json). A metric is aggregated when any report has it, and then every report must:
a fold evaluated differently (say, without `--swap-check`) is an error, not a silently smaller mean. A metric
that is null in a fold (an undefined correlation) is left out of that metric's mean, and `folds` says how many
counted. The standard deviation is the sample one (n − 1), null for a single fold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

METRICS = ("accuracy", "choice_accuracy", "swap_consistency", "bt_pearson", "bt_spearman")


class ReportError(Exception):
    """A report is missing, unreadable, or does not match the others."""


def read_report(path: Path) -> dict:
    path = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such report") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: unreadable report ({error})") from None
    if not isinstance(report, dict):
        raise ReportError(f"{path}: not an evaluation report (a JSON object)")
    return report


def fold_names(paths: list[Path]) -> list[str]:
    """A report's folder name (fold0/report.json → fold0), or its path where folder names repeat."""
    names = [(path if path.is_dir() else path.parent).name or str(path) for path in paths]
    return names if len(set(names)) == len(names) else [str(path) for path in paths]


def check_metrics(reports: dict[str, dict]) -> list[str]:
    """The metrics present in any report; raises naming a report that lacks one or holds a non-number."""
    present = [key for key in METRICS if any(key in report for report in reports.values())]
    if not present:
        raise ReportError(f"no report has any of {', '.join(METRICS)}")
    for key in present:
        holder = next(name for name, report in reports.items() if key in report)
        for name, report in reports.items():
            if key not in report:
                raise ReportError(f"{name} lacks {key}, which {holder} has")
            value = report[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ReportError(f"{name}: {key} is {value!r}, not a number")
    return present


def spread(values: list[float | None]) -> dict:
    counted = [value for value in values if value is not None]
    return {
        "mean": statistics.fmean(counted) if counted else None,
        "std": statistics.stdev(counted) if len(counted) > 1 else None,
        "folds": len(counted),
    }


def aggregate(paths: list[Path]) -> dict:
    repeated = sorted({str(path) for path in paths if paths.count(path) > 1})
    if repeated:
        raise ReportError(f"given more than once: {', '.join(repeated)}")
    reports = dict(zip(fold_names(paths), map(read_report, paths)))
    metrics = check_metrics(reports)
    return {
        "reports": [str(path) for path in paths],
        "metrics": {key: spread([report[key] for report in reports.values()]) for key in metrics},
        "folds": [
            {"fold": name, "num_samples": report.get("num_samples")} | {key: report[key] for key in metrics}
            for name, report in reports.items()
        ],
    }


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def markdown(summary: dict) -> str:
    metrics = list(summary["metrics"])
    lines = [f"# K-fold summary ({len(summary['folds'])} reports)", "", "| metric | mean | std | folds |"]
    lines.append("|---|---|---|---|")
    for key, row in summary["metrics"].items():
        lines.append(f"| {key} | {number(row['mean'])} | {number(row['std'])} | {row['folds']} |")
    lines += ["", "## Per fold", "", "| fold | samples | " + " | ".join(metrics) + " |"]
    lines.append("|---" * (len(metrics) + 2) + "|")
    for fold in summary["folds"]:
        values = " | ".join(number(fold[key]) for key in metrics)
        lines.append(f"| {fold['fold']} | {fold['num_samples']} | {values} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="launch/aggregate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument("--reports", type=Path, nargs="+", required=True, help="report.json files (or their folders)")
    root.add_argument("--out", type=Path, required=True, help="folder for summary.json and summary.md")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = aggregate(args.reports)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "summary.md").write_text(markdown(summary))
    print(json.dumps({key: row["mean"] for key, row in summary["metrics"].items()} | {"summary": str(args.out)}))
    return 0
