"""Hugging Face parquet layouts, written as `datasets` writes them (HF Image structs {bytes, path}, the features in
the schema's `huggingface` metadata, small row groups so that readers must stream):

- `cauldron`: the_cauldron's `images` + `texts` [{user, assistant, source}], n rows over
  `data/train-00000-of-00002.parquet` and `data/train-00001-of-00002.parquet`; every fourth row has two images.
- `onevision`: LLaVA-OneVision-Data's `id`, `image`, `conversations` [{from, value}], `data_source`, n rows in
  `vqa/train-00000-of-00001.parquet`; unusual: a text-only row (no image).

Defects (appended to the last file; record key → reason, keys as the reader names rows without an `id`):
cauldron: empty texts, a null answer, an image struct without bytes or path (malformed_record), corrupt bytes
(unreadable_image), an empty answer (empty_answer); onevision: an unknown role (malformed_record), a placeholder
without an image (placeholder_mismatch), zero image bytes (zero_byte_image), a copy of row 0 under another id
(duplicate_sample).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.vocabulary import QUESTIONS, TEXT_ONLY_EXCHANGE

FORMAT = "parquet"
ROWS_PER_GROUP = 4
STRING = {"dtype": "string", "_type": "Value"}
CAULDRON_FEATURES = {
    "images": {"feature": {"_type": "Image"}, "_type": "Sequence"},
    "texts": [{"user": STRING, "assistant": STRING, "source": STRING}],
}
ONEVISION_FEATURES = {
    "id": STRING,
    "image": {"_type": "Image"},
    "conversations": [{"from": STRING, "value": STRING}],
    "data_source": STRING,
}


def image_type() -> Any:
    import pyarrow as pa

    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def jpeg(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_table(path: Path, rows: list[dict[str, Any]], schema: Any, features: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = pa.Table.from_pylist(rows, schema=schema.with_metadata(metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP)


def cauldron_row(plan: Plan, index: int) -> dict[str, Any]:
    pictures = [plan.picture() for _ in range(2 if index % 4 == 3 else 1)]
    if len(pictures) == 2:
        texts = [{"user": "What color is the shape in the second image?", "assistant": pictures[1].color}]
    else:
        texts = [{"user": QUESTIONS["color"], "assistant": pictures[0].color}]
        if index % 2:
            texts.append({"user": QUESTIONS["shape"], "assistant": pictures[0].shape})
    images = [{"bytes": jpeg(picture.image), "path": None} for picture in pictures]
    return {"images": images, "texts": [{**text, "source": "synthetic"} for text in texts]}


def cauldron_defects(plan: Plan) -> list[tuple[dict[str, Any], str]]:
    good = {"bytes": jpeg(plan.picture().image), "path": None}
    question = {"user": QUESTIONS["color"], "source": "synthetic"}
    return [
        ({"images": [good], "texts": []}, "malformed_record"),
        ({"images": [good], "texts": [{**question, "assistant": None}]}, "malformed_record"),
        ({"images": [{"bytes": None, "path": None}], "texts": [{**question, "assistant": "red"}]}, "malformed_record"),
        (
            {
                "images": [{"bytes": plan.rng.bytes(512), "path": "noise.jpg"}],
                "texts": [{**question, "assistant": "red"}],
            },
            "unreadable_image",
        ),
        ({"images": [good], "texts": [{**question, "assistant": ""}]}, "empty_answer"),
    ]


def write_cauldron(plan: Plan) -> SyntheticDataset:
    import pyarrow as pa

    text = pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])
    schema = pa.schema([("images", pa.list_(image_type())), ("texts", pa.list_(text))])
    rows = [cauldron_row(plan, index) for index in range(plan.n)]
    halves = [rows[: (plan.n + 1) // 2], rows[(plan.n + 1) // 2 :]]
    names = ["data/train-00000-of-00002", "data/train-00001-of-00002"]
    defects = {}
    for row, reason in cauldron_defects(plan) if plan.defects else []:
        defects[f"{names[1]}/{len(halves[1]):06d}"] = reason
        halves[1].append(row)
    for name, part in zip(names, halves):
        write_table(plan.root / f"{name}.parquet", part, schema, CAULDRON_FEATURES)
    return SyntheticDataset(FORMAT, plan.root, None, sum(map(len, halves)), defects, {})


def onevision_row(plan: Plan, index: int) -> dict[str, Any]:
    picture, key = plan.picture(), f"ov{index:05d}"
    turns = [("human", f"<image>\n{QUESTIONS['color']}"), ("gpt", picture.color)]
    if index % 3 == 1:
        turns += [("human", QUESTIONS["shape"]), ("gpt", picture.shape)]
    conversations = [{"from": role, "value": value} for role, value in turns]
    image = {"bytes": jpeg(picture.image), "path": f"{key}.jpg"}
    return {"id": key, "image": image, "conversations": conversations, "data_source": "synthetic_vqa"}


def onevision_defects(plan: Plan, first: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{**onevision_row(plan, 0), "id": f"d_{reason}"} for reason in ("role", "placeholder", "zero")]
    rows[0]["conversations"] = [{"from": "robot", "value": "<image>\nbeep"}, {"from": "gpt", "value": "red"}]
    rows[1]["image"] = None
    rows[2]["image"] = {"bytes": b"", "path": "empty.jpg"}
    return [*rows, {**first, "id": "d_duplicate"}]


def write_onevision(plan: Plan) -> SyntheticDataset:
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    fields = [("id", pa.string()), ("image", image_type()), ("conversations", pa.list_(turn))]
    schema = pa.schema([*fields, ("data_source", pa.string())])
    rows = [onevision_row(plan, index) for index in range(plan.n)]
    unusual = {}
    if plan.unusual:
        question, answer = TEXT_ONLY_EXCHANGE
        talk = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        rows.append({"id": "u_text_only", "image": None, "conversations": talk, "data_source": "synthetic_vqa"})
        unusual["u_text_only"] = "no image"
    defects = {}
    if plan.defects:
        extra = onevision_defects(plan, rows[0])
        reasons = ("malformed_record", "placeholder_mismatch", "zero_byte_image", "duplicate_sample")
        defects = {row["id"]: reason for row, reason in zip(extra, reasons)}
        rows += extra
    write_table(plan.root / "vqa" / "train-00000-of-00001.parquet", rows, schema, ONEVISION_FEATURES)
    return SyntheticDataset(FORMAT, plan.root, None, len(rows), defects, unusual)
