"""Presets: partial configs (`configs/presets/*.yaml`) layered under a recipe: defaults ← preset ← YAML ← overrides.

`train.preset` names one (`quick-test`) or gives a YAML file's path; it may be set in the recipe, as an
override, or with `--preset`. A preset sets defaults: whatever the recipe or an override sets wins. The
resolved config keeps `train.preset`, so a run records the preset it started from.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from trainer.config.fields import ConfigError, flatten, load_yaml

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "presets"
KEY = "train.preset"


def available() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def preset_file(name: str) -> Path:
    """A shipped preset by name, or a YAML file by path (a name with a folder or a .yaml/.yml ending)."""
    if len(Path(name).parts) > 1 or Path(name).suffix in (".yaml", ".yml"):
        return Path(name)
    if name not in available():
        raise ConfigError(
            [f"{KEY}: unknown preset {name!r}; available: {', '.join(available())} (or a YAML file's path)"]
        )
    return PRESET_DIR / f"{name}.yaml"


def preset_values(name: str, keys: Collection[str]) -> dict[str, Any]:
    """The flat `section.key` values of a preset; it may set only known keys, and no preset of its own."""
    path = preset_file(name)
    try:
        values = flatten(load_yaml(path))
    except ConfigError as error:
        raise ConfigError([f"{KEY}: {problem}" for problem in error.problems]) from None
    problems = [f"{KEY}: {path} sets {key}, which is not a config key" for key in values if key not in keys]
    if KEY in values:
        problems.append(f"{KEY}: {path} sets {KEY} itself (presets do not nest)")
    if problems:
        raise ConfigError(problems)
    return values
