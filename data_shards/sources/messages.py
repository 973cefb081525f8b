"""OpenAI/ShareGPT-style `messages` (string content or typed parts) with an `images` list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject
from data_shards.sample import IMAGE_TOKEN
from data_shards.sources.common import SourceOptions, image_list, make_turn, read_json_records, record_key

NAME = "messages"


def detect(record: Any) -> bool:
    return isinstance(record, dict) and "messages" in record


def default_image_root(path: Path) -> Path:
    return path.parent


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    return read_json_records(path, parse_record)


def parse_record(record: Any, origin: str, fallback_key: str) -> RawSample:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError("record must be an object with a 'messages' list")
    turns = []
    for position, message in enumerate(record["messages"]):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{position}] needs 'role' and 'content'")
        turns.append(make_turn(message["role"], content_text(message["content"], position)))
    return RawSample(
        key=record_key(record, fallback_key),
        image_refs=image_list(record.get("images")),
        turns=turns,
        origin=origin,
        source=NAME,
    )


def content_text(content: Any, position: int) -> str:
    """Message content as text: image parts become `<image>` placeholders, parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"messages[{position}].content must be a string or a list of parts")
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind in ("image", "image_url"):
            pieces.append(IMAGE_TOKEN)
        else:
            raise ValueError(f"messages[{position}] has a content part of unknown shape: {part!r}"[:200])
    return "\n".join(pieces)
