"""A run folder read as it is: `config.resolved.json`, `metrics.jsonl` (a run still training too: a line being
written is left for the next read) and `train_summary.json`, which only a finished run has."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.compare.run import CompareError, Run, Series, flatten
from trainer.run_folder import RunFolder


def is_run_folder(path: Path) -> bool:
    folder = RunFolder(path)
    return folder.run_config.is_file() or folder.metrics.is_file()


def read_series(path: Path) -> Series:
    """metric → step → value; a resumed run re-logs the steps after its checkpoint, and the last value wins."""
    series: Series = {}
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line the trainer is writing now
        step = record.pop("step", None)
        for name, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and step is not None:
                series.setdefault(name, {})[step] = float(value)
    return series


def read_run_folder(path: Path) -> Run:
    folder = RunFolder(path)
    try:
        config = folder.read_run_config()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CompareError(f"{folder.run_config}: unreadable ({error})") from None
    return Run(
        name=path.name,
        source=str(path),
        config=flatten(config),
        series=read_series(folder.metrics),
        state="finished" if folder.summary.exists() else "unfinished",
        group=str(config.get("tracking", {}).get("group") or ""),
        tags=tuple(config.get("tracking", {}).get("tags") or ()),
    )
