"""W&B's servers: runs read through the public API (`--wandb ENTITY/PROJECT`), and the comparison logged back as a
table (`--log-wandb [ENTITY/]PROJECT`). Kept thin: a run read here becomes the same `Run` a run folder does.

Reading needs a login (`WANDB_API_KEY` or `wandb login`). Only the run fields of `--filter` (group, name, id, state,
tags) go to the server; config keys are matched here, as for every other source, so a key no run has is named.
Logging writes a run of its own (job type `compare`) in the mode `WANDB_MODE` says: online unless set, so an offline
log (for `wandb sync` later) works with no server too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.compare.run import CompareError, Run, Series, flatten
from trainer.compare.wandb_files import CONFIG_OF_WANDB, number

SERVER_FIELDS = {"group": "group", "name": "displayName", "id": "name", "state": "state", "tags": "tags"}


def server_filters(filters: list[tuple[str, str]]) -> dict[str, str]:
    return {SERVER_FIELDS[key]: value for key, value in filters if key in SERVER_FIELDS}


def history(run: Any) -> Series:
    series: Series = {}
    for row in run.scan_history():
        step = int(row.get("_step", 0))
        for name, value in row.items():
            value = number(value)
            if value is not None and not name.startswith("_"):
                series.setdefault(name, {})[step] = value
    return series


def as_run(path: str, run: Any) -> Run:
    config = {key: value for key, value in run.config.items() if key != CONFIG_OF_WANDB}
    return Run(
        name=run.name or run.id,
        source=f"{path}/{run.id}",
        config=flatten(config),
        series=history(run),
        state=run.state,
        group=run.group or "",
        run_id=run.id,
        tags=tuple(run.tags or ()),
        wall_time_s=number(run.summary_metrics.get("_runtime")),
    )


def read_project(path: str, filters: list[tuple[str, str]]) -> list[Run]:
    import wandb

    try:
        runs = list(wandb.Api().runs(path, filters=server_filters(filters)))
    except Exception as error:  # the API raises its own errors, ValueError and requests' alike
        raise CompareError(f"--wandb {path}: {error}") from None
    if not runs:
        raise CompareError(f"--wandb {path}: no run matches {server_filters(filters) or 'this project'}")
    return [as_run(path, run) for run in runs]


def table_of(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """compare.md's run table as flat columns: name, group, state, the differing keys, counts, final/, best/."""
    metrics = list(dict.fromkeys(metric for row in report["runs"] for metric in row["final"]))
    counts = ["steps", "samples", "tokens", "samples_per_s", "tokens_per_s", "train_time_s", "wall_time_s"]
    columns = ["name", "group", "state", *report["differing_keys"], *counts]
    columns += [f"{which}/{metric}" for metric in metrics for which in ("final", "best")]
    data = [
        [
            row["name"],
            row["group"],
            row["state"],
            *(str(row["config"][key]) for key in report["differing_keys"]),
            *(row[count] for count in counts),
            *(
                value
                for metric in metrics
                for value in (row["final"].get(metric), row["best"].get(metric, {}).get("value"))
            ),
        ]
        for row in report["runs"]
    ]
    return columns, data


def log_comparison(report: dict[str, Any], figures: list[str], out: Path, target: str) -> str:
    """Logs the table and the curve figures to a new W&B run in `target`; returns its run id."""
    import wandb

    entity, _, project = target.rpartition("/")
    columns, data = table_of(report)
    run = wandb.init(
        entity=entity or None,
        project=project,
        job_type="compare",
        name=f"compare-{len(report['runs'])}-runs",
        dir=str(out),
        config={"runs": [row["name"] for row in report["runs"]], "differing_keys": report["differing_keys"]},
    )
    try:
        images = {Path(figure).stem: wandb.Image(str(out / figure)) for figure in figures}
        run.log({"compare": wandb.Table(columns=columns, data=data), **images})
    finally:
        run.finish()
    return run.id
