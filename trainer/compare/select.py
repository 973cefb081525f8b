"""Which runs are compared, and in which groups.

`--filter KEY=VALUE` (repeatable, all must match): KEY is a run field — `group`, `name`, `id`, `state`, `tags` (one of
them) — or a config key, dotted as in `config.resolved.json` (`optimizer.lr`; a leading `config.` is allowed). A VALUE
matches a value with the same text, or the same number (`1e-3` matches 0.001). A KEY no run has is an error naming the
key, where the runs were read from, and the nearest keys there.

Groups: a run keeps the group its source gave it (the folds of an array folder, the cells of a grid folder, a W&B
group or `tracking.group`) unless `--group-by KEY` regroups every run by KEY's value. A group of one run is no group.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from trainer.compare.run import CompareError, Run

RUN_FIELDS = ("group", "name", "id", "state", "tags")


def parse_filter(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise CompareError(f"--filter {text}: not KEY=VALUE (e.g. group=lmol-5fold, optimizer.lr=1e-4)")
    return key.strip(), value.strip()


def values_of(run: Run, key: str) -> list[Any] | None:
    """What KEY holds in `run` (a list: `tags` holds several), None where the run has no such key."""
    fields = {"group": [run.group], "name": [run.name], "id": [run.run_id], "state": [run.state], "tags": [*run.tags]}
    if key in fields:
        return fields[key]
    key = key.removeprefix("config.")
    return [run.config[key]] if key in run.config else None


def same(value: Any, text: str) -> bool:
    if str(value) == text or json.dumps(value) == text:
        return True
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and float(text) == float(value)
    except ValueError:
        return False


def unknown_key(option: str, key: str, runs: list[Run], read_from: str) -> CompareError:
    known = sorted({name for run in runs for name in run.config})
    near = difflib.get_close_matches(key.removeprefix("config."), known, n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return CompareError(
        f"{option} {key}: no run read from {read_from} has this key (run fields: {', '.join(RUN_FIELDS)}; "
        f"config keys: dotted, e.g. {known[0] if known else 'optimizer.lr'}){hint}"
    )


def apply_filters(runs: list[Run], filters: list[tuple[str, str]], read_from: str) -> list[Run]:
    for key, _ in filters:
        if key not in RUN_FIELDS and all(values_of(run, key) is None for run in runs):
            raise unknown_key("--filter", key, runs, read_from)
    return [
        run
        for run in runs
        if all(any(same(value, wanted) for value in values_of(run, key) or ()) for key, wanted in filters)
    ]


def regroup(runs: list[Run], key: str, read_from: str) -> None:
    """Every run's group becomes `KEY=value` (`KEY=—` where a run lacks the key)."""
    if all(values_of(run, key) is None for run in runs):
        raise unknown_key("--group-by", key, runs, read_from)
    for run in runs:
        values = values_of(run, key)
        run.group = f"{key}={', '.join(map(str, values)) if values else '—'}"


def groups(runs: list[Run]) -> dict[str, list[Run]]:
    """group name → its runs, in the order read; only groups of two runs or more."""
    members: dict[str, list[Run]] = {}
    for run in runs:
        if run.group:
            members.setdefault(run.group, []).append(run)
    return {name: group for name, group in members.items() if len(group) > 1}
