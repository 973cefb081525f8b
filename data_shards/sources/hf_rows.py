"""Hugging Face dataset rows (from parquet or save_to_disk arrow files) → raw samples.

The layout comes from the columns, first match: `texts` (the_cauldron: [{user, assistant, source}]), `messages`
([{role, content}], content a string or [{type: text|image}]), `conversations` (LLaVA, LLaVA-OneVision: [{from,
value}]), `label` (a classification set; names from its ClassLabel feature, else the label as written). Images are
the `images` (a list) or `image` column, else the first column of HF Image structs {bytes, path} or lists of them.
When no turn holds an `<image>` placeholder (the_cauldron never does), one per image opens the first user turn.

Embedded image bytes become files under the image root (`data_shards.sources.embedded`).
A row is `file:N` in rejects, N counting from 0 within the file; an unusable row is a `malformed_record`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import IMAGE_TOKEN, Turn
from data_shards.sources.common import SourceOptions, make_turn
from data_shards.sources.embedded import Extractor, image_items
from data_shards.sources.messages import content_text

LAYOUTS = ("texts", "messages", "conversations", "label")
IMAGE_COLUMNS = ("images", "image")
SOURCE_COLUMNS = ("data_source", "source")
SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test")


@dataclass(frozen=True)
class Table:
    """What one file's schema says: its layout and the columns a row is read from."""

    layout: str
    image_column: str | None
    id_column: str | None
    source_column: str | None
    class_names: list[str] | None

    @property
    def columns(self) -> list[str]:
        names = (self.layout, self.image_column, self.id_column, self.source_column)
        return [name for name in dict.fromkeys(names) if name is not None]


def hf_features(metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The `features` an arrow schema's `huggingface` metadata holds ({} without any)."""
    try:
        info = json.loads((metadata or {}).get(b"huggingface", b"{}"))
    except json.JSONDecodeError:
        return {}
    section = info.get("info") if isinstance(info, dict) else None
    features = section.get("features") if isinstance(section, dict) else None
    return features if isinstance(features, dict) else {}


def is_image_type(arrow_type: Any) -> bool:
    """An HF Image struct {bytes, path}, or a list of them."""
    import pyarrow as pa

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_struct(arrow_type) and {"bytes", "path"} <= {field.name for field in arrow_type}


def describe(schema: Any, features: dict[str, Any], where: str) -> Table:
    names = list(schema.names)
    layout = next((name for name in LAYOUTS if name in names), None)
    if layout is None:
        raise SourceError(f"{where}: no {', '.join(LAYOUTS)} column to build turns from (columns: {names})")
    image = next((name for name in IMAGE_COLUMNS if name in names), None)
    image = image or next((f.name for f in schema if is_image_type(f.type)), None)
    source = next((name for name in SOURCE_COLUMNS if name in names), None)
    label_feature = features.get("label") if layout == "label" else None
    class_names = label_feature.get("names") if isinstance(label_feature, dict) else None
    if not (isinstance(class_names, list) and all(isinstance(name, str) for name in class_names)):
        class_names = None
    return Table(layout, image, "id" if "id" in names else None, source, class_names)


def split_of(relative: str) -> str | None:
    """The split a HF file name gives: `train-00000-of-00002.parquet`, `data/test/0000.parquet`, `train/….arrow`."""
    parts = PurePosixPath(relative).parts
    stem = parts[-1].split("-")[0].split(".")[0].lower()
    return next((part for part in (stem, *reversed(parts[:-1])) if part.lower() in SPLIT_NAMES), None)


def layout_turns(row: dict[str, Any], table: Table, options: SourceOptions) -> tuple[list[Turn], str | None]:
    """The row's turns and label, by layout."""
    value = row.get(table.layout)
    if table.layout == "label":
        return label_turns(value, table.class_names, options)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{table.layout} must be a non-empty list, got {value!r}"[:200])
    turns = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"{table.layout}[{position}] must be a struct, got {type(item).__name__}")
        if table.layout == "texts":
            for role in ("user", "assistant"):
                if not isinstance(item.get(role), str):
                    raise ValueError(f"texts[{position}].{role} must be a string, got {item.get(role)!r}"[:200])
                turns.append(Turn(role, item[role]))
        elif table.layout == "messages":
            turns.append(make_turn(item.get("role"), content_text(item.get("content"), position)))
        else:
            turns.append(make_turn(item.get("from"), item.get("value")))
    return turns, None


def label_turns(value: Any, names: list[str] | None, options: SourceOptions) -> tuple[list[Turn], str]:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"label must be an integer or a string, got {value!r}"[:200])
    if isinstance(value, int) and names is not None:
        if not 0 <= value < len(names):
            raise ValueError(f"label {value} is outside the {len(names)} class names (-1 marks an unlabelled row)")
        value = names[value]
    name = str(value)
    return [Turn("user", options.class_question), Turn("assistant", options.class_answer.format(name=name))], name


def with_placeholders(turns: list[Turn], count: int) -> list[Turn]:
    if not count or any(IMAGE_TOKEN in turn.text for turn in turns):
        return turns
    first = next((index for index, turn in enumerate(turns) if turn.role == "user"), None)
    if first is None:
        return turns
    turns = list(turns)
    turns[first] = Turn("user", f"{IMAGE_TOKEN}\n" * count + turns[first].text)
    return turns


def row_sample(row: dict[str, Any], table: Table, key: str, origin: str, context: RowContext) -> RawSample:
    turns, label = layout_turns(row, table, context.options)  # first, so a malformed row writes no images
    column = table.image_column
    items = image_items(row.get(column), column) if column else []
    refs = [context.extractor.ref(item, f"{column}[{position}]") for position, item in enumerate(items)]
    extra: dict[str, Any] = {}
    if table.class_names and context.options.class_choices:
        extra["choices"] = table.class_names
    source = row.get(table.source_column) if table.source_column else None
    if source is None and table.layout == "texts":
        source = next((item.get("source") for item in row["texts"] if item.get("source")), None)
    if isinstance(source, str) and source:
        extra["data_source"] = source
    turns = with_placeholders(turns, len(refs))
    return RawSample(key, refs, turns, origin, label, source=context.reader, extra=extra, split=context.split)


@dataclass
class RowContext:
    reader: str
    file: str  # relative to the input, as origins name it
    split: str | None
    extractor: Extractor
    options: SourceOptions


def row_key(row: dict[str, Any], table: Table, file: str, index: int) -> str:
    value = row.get(table.id_column) if table.id_column else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return f"{PurePosixPath(file).with_suffix('')}/{index:06d}"


def rows_to_samples(rows: Iterable[dict[str, Any]], table: Table, context: RowContext) -> Iterator[RawSample | Reject]:
    for index, row in enumerate(rows):
        origin, key = f"{context.file}:{index}", row_key(row, table, context.file, index)
        try:
            yield row_sample(row, table, key, origin, context)
        except ValueError as error:
            yield Reject(key, "malformed_record", f"{origin}: {error}", origin)
