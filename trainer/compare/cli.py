"""`shardtune-compare RUN... --out DIR`: runs side by side.

    shardtune-compare runs/lr1e-4 runs/lr3e-4 --out runs/compare
    shardtune-compare 'runs/sweep/*' runs/lmol --out cmp/ --group-by lora.r
    shardtune-compare --wandb ENTITY/PROJECT --filter group=lmol-kfold5 --out cmp/
    shardtune-compare runs/lmol/fold0/wandb runs/lmol/fold1/wandb --out cmp/     # offline W&B files, no server

RUN: a run folder, a glob, a SLURM array or grid folder (its runs, one group), or W&B files (`wandb/`,
`wandb/offline-run-*`); runs still training are read as they are. Writes into DIR:

- `compare.md` and `compare.json`: each run's name, group and state, the config keys whose values differ (dotted),
  steps, samples and tokens seen, throughput, train and wall time, the final and best value of each metric; and
  each group's mean ± std (folds of an array, cells of a grid, a W&B group, or `--group-by KEY`);
- `curves_by_step.png`, `curves_by_samples.png`: loss, eval metrics, lr, grad norm and tokens/s overlaid, groups as
  mean with a ± std band.

Config keys not compared, as they differ per run by design: train.output_dir, tracking.name, tracking.group and the
job.* section of W&B configs. `--log-wandb [ENTITY/]PROJECT` also logs the table and figures to W&B. Exit code 2,
naming the path, key or filter, when something given cannot be read or used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainer.compare.markdown import markdown
from trainer.compare.plots import plot_curves
from trainer.compare.report import build_report, jsonable
from trainer.compare.run import CompareError, Run
from trainer.compare.select import apply_filters, groups, parse_filter, regroup
from trainer.compare.sources import read_arguments, unique_names

REPORT = "compare.md"
REPORT_JSON = "compare.json"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="shardtune-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument("runs", nargs="*", metavar="RUN", help="run folder, glob, array/grid folder or W&B files")
    root.add_argument("--out", type=Path, required=True, help="folder for compare.md, compare.json and the figures")
    root.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read this project's runs through W&B's API")
    root.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help="keep runs whose KEY is VALUE (repeatable)"
    )
    root.add_argument("--group-by", metavar="KEY", help="group runs by this config key (or group, state, tags...)")
    root.add_argument("--log-wandb", metavar="[ENTITY/]PROJECT", help="log the table and figures to W&B as well")
    return root


def read_runs(args: argparse.Namespace, filters: list[tuple[str, str]]) -> tuple[list[Run], str]:
    """The runs asked for, and where they were read from (for messages)."""
    runs = read_arguments(args.runs)
    if args.wandb:
        from trainer.compare.wandb_api import read_project

        runs += read_project(args.wandb, filters)
    return runs, ", ".join([*args.runs, *([f"W&B {args.wandb}"] if args.wandb else [])])


def write_comparison(runs: list[Run], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(runs)
    report["figures"] = plot_curves(runs, groups(runs), out)
    (out / REPORT_JSON).write_text(json.dumps(jsonable(report), indent=1) + "\n")
    (out / REPORT).write_text(markdown(report, list(report["figures"])))
    return report


def compare(args: argparse.Namespace) -> dict[str, Any]:
    filters = [parse_filter(text) for text in args.filter]
    runs, read_from = read_runs(args, filters)
    kept = apply_filters(runs, filters, read_from)
    if not kept:
        raise CompareError(f"{read_from}: no run matches --filter {' '.join(args.filter)}")
    if args.group_by:
        regroup(kept, args.group_by, read_from)
    unique_names(kept)
    report = write_comparison(kept, args.out)
    if args.log_wandb:
        from trainer.compare.wandb_api import log_comparison

        report["wandb_run"] = log_comparison(report, list(report["figures"]), args.out, args.log_wandb)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.runs and not args.wandb:
        parser().error("give a RUN or --wandb ENTITY/PROJECT")
    try:
        report = compare(args)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(report['runs'])} runs compared: {args.out / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
