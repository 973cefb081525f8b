"""Helpers shared by the source readers: JSON/JSONL record iteration and turn conversion."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import Turn

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class SourceOptions:
    """Templates and extras for sources that build conversations from labels or captions."""

    caption_prompt: str = "<image>\nDescribe this image."
    class_question: str = "<image>\nWhat is shown in this image?"
    class_answer: str = "{name}"
    class_names: Path | None = None
    class_choices: bool = False  # extra.choices: every class name, on each class-question sample
    pairs_question: str = "<image>\n<image>\nCompare the first image with the second. Answer First, Second or Similar."


def read_text(path: Path) -> str:
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.is_dir():
        raise SourceError(f"{path}: is a folder, expected a file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def load_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SourceError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None


def iter_json_records(path: Path) -> Iterator[tuple[str, Any] | Reject]:
    """(origin, record) for each record of a JSON list or a JSONL file; a bad JSONL line is a Reject."""
    text = read_text(path)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        for index, record in enumerate(whole):
            yield f"{path.name}[{index}]", record
        return
    if whole is not None:
        raise SourceError(f"{path}: expected a JSON list or JSONL records, got a JSON {type(whole).__name__}")
    yield from _iter_jsonl(path, text.splitlines())


def _iter_jsonl(path: Path, lines: list[str]) -> Iterator[tuple[str, Any] | Reject]:
    parsed: list[tuple[int, Any] | Reject] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            parsed.append(
                Reject(f"line{number}", "malformed_json", f"line {number}: {error.msg}", f"{path.name}:{number}")
            )
    if not any(isinstance(item, tuple) and isinstance(item[1], dict) for item in parsed):
        first = next((item for item in parsed if isinstance(item, Reject)), None)
        where = f" ({first.detail})" if first else ""
        raise SourceError(f"{path}: not JSON or JSONL{where}")
    for item in parsed:
        yield item if isinstance(item, Reject) else (f"{path.name}:{item[0]}", item[1])


def read_json_records(path: Path, parse: Callable[[Any, str, str], RawSample]) -> Iterator[RawSample | Reject]:
    """Each record of a JSON list or JSONL file through `parse(record, origin, fallback_key)`;
    a ValueError from it becomes a `malformed_record` reject naming the record."""
    for index, item in enumerate(iter_json_records(path)):
        if isinstance(item, Reject):
            yield item
            continue
        origin, record = item
        try:
            yield parse(record, origin, f"rec{index:07d}")
        except ValueError as error:
            key = record.get("id") if isinstance(record, dict) else None
            yield Reject(None if key is None else str(key), "malformed_record", str(error), origin)


def make_turn(role: Any, text: Any) -> Turn:
    if role not in ROLE_ALIASES:
        raise ValueError(f"unknown role {role!r} (expected one of {sorted(ROLE_ALIASES)})")
    if not isinstance(text, str):
        raise ValueError(f"turn text must be a string, got {type(text).__name__}")
    return Turn(ROLE_ALIASES[role], text)


def image_list(value: Any) -> list[str]:
    """An `image` field as a list of paths: absent, one path, or a list of paths."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(f"image must be a path or a list of paths, got {type(value).__name__}")


def record_key(record: dict, fallback: str) -> str:
    """The record's `id`; without one (absent or null), `fallback`, from the record's position in the file."""
    value = record.get("id")
    if value is None:
        return fallback
    if not isinstance(value, (str, int)) or str(value) == "":
        raise ValueError(f"id must be a non-empty string or integer, got {value!r}")
    return str(value)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
