"""Typed configuration machinery: dataclasses with documented fields, YAML + dotted overrides, one error.

A config is a tree of dataclasses whose fields carry `metadata={"help": ...}` (use `option()`).
`load_config` merges defaults ← YAML ← `section.key=value` overrides, checks every value against
its annotation and its choices, and raises one `ConfigError` listing every bad key. `read_values` and
`check_config` are its two halves, for a loader that layers more values (a preset) in between.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    choices: tuple | None = None,
    factory: Any = dataclasses.MISSING,
    secret: bool = False,
):
    metadata = {"help": help, "choices": choices, "secret": secret}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def walk_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, resolved type) for every leaf field of a config class."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from walk_fields(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, kind


def describe(cls: type) -> str:
    """Every key with its type, default and doc: the `--help` text of a config."""
    lines = []
    for key, f, kind in walk_fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        )
        choices = f" one of {list(f.metadata['choices'])};" if f.metadata.get("choices") else ""
        lines.append(f"  {key} ({type_name(kind)}, default {default!r}):{choices} {f.metadata.get('help', '')}")
    return "\n".join(lines)


def type_name(kind: Any) -> str:
    if isinstance(kind, type):
        return kind.__name__
    return str(kind).replace("typing.", "")


def parse_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    values, problems = {}, []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"{item!r}: overrides look like section.key=value")
            continue
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = text
    return values, problems


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and not key.startswith("_"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML ({error})"]) from None
    if not isinstance(document, dict):
        raise ConfigError([f"{path}: a config must be a mapping of sections"])
    return document


def load_config(cls: type, yaml_path: Path | None = None, overrides: list[str] | None = None):
    """Defaults ← YAML ← overrides, checked; raises ConfigError naming every bad key at once."""
    values, problems = read_values(yaml_path, overrides)
    return check_config(cls, values, problems)


def read_values(yaml_path: Path | None, overrides: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """The flat `section.key` values of a YAML file updated by overrides, and the malformed overrides."""
    values = flatten(load_yaml(yaml_path)) if yaml_path else {}
    override_values, problems = parse_overrides(overrides or [])
    values.update(override_values)
    return values, problems


def check_config(cls: type, values: dict[str, Any], problems: list[str]):
    """The config of flat values over the defaults, checked; raises ConfigError naming every bad key at once."""
    leaves = {key: (f, kind) for key, f, kind in walk_fields(cls)}
    problems = problems + [f"{key}: unknown key{suggestion(key, leaves)}" for key in values if key not in leaves]
    checked = {}
    for key, value in values.items():
        if key in leaves:
            value, problem = coerce(value, leaves[key][1])
            problem = problem or choice_problem(value, leaves[key][0])
            if problem:
                problems.append(f"{key}: {problem}")
            checked[key] = value
    if problems:
        raise ConfigError(problems)
    config = build(cls, checked)
    cross_problems = config.problems() if hasattr(config, "problems") else []
    if cross_problems:
        raise ConfigError(cross_problems)
    return config


def suggestion(key: str, leaves: dict) -> str:
    tail = key.rsplit(".", 1)[-1]
    near = [k for k in leaves if k.rsplit(".", 1)[-1] == tail]
    return f" (did you mean {near[0]}?)" if near else ""


def choice_problem(value: Any, f: dataclasses.Field) -> str | None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"{value!r} is not one of {list(choices)}"
    return None


def coerce(value: Any, kind: Any) -> tuple[Any, str | None]:
    """Check (and gently convert: int → float, scalar → list) a value against a type annotation."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, None
        for arg in (a for a in args if a is not type(None)):
            converted, problem = coerce(value, arg)
            if problem is None:
                return converted, None
        return value, f"{value!r} is not {type_name(kind)}"
    if origin in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        converted = []
        for item in items:
            item, problem = coerce(item, args[0] if args else Any)
            if problem:
                return value, problem
            converted.append(item)
        return (tuple(converted) if origin is tuple else converted), None
    if kind is Any:
        return value, None
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value), None
        except ValueError:
            return value, f"{value!r} is not a number"
    if kind is bool and not isinstance(value, bool):
        return value, f"{value!r} is not true/false"
    if kind is int and isinstance(value, bool):
        return value, f"{value!r} is not an integer"
    if isinstance(kind, type) and not isinstance(value, kind):
        return value, f"{value!r} is not {kind.__name__}"
    return value, None


def build(cls: type, values: dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = build(hints[f.name], values, f"{key}.")
        elif key in values:
            kwargs[f.name] = values[key]
    return cls(**kwargs)


def to_dict(config: Any, redact: bool = False) -> dict[str, Any]:
    """Plain nested dict of a config; secrets replaced by '***' when `redact`."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value, redact)
        elif redact and f.metadata.get("secret") and value:
            out[f.name] = "***"
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
