"""The hf-disk format: what `DatasetDict.save_to_disk` writes for an image classification set, `dataset_dict.json`
and one folder per split (`train`, `test`) with `data-00000-of-00001.arrow` (an arrow IPC stream), `state.json`
and `dataset_info.json` (features: `image` an Image, `label` a ClassLabel naming the first three colours).

n images, three in four in train; with defects, one more test row labelled -1 (unlabelled: malformed_record).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_shards.synthetic.files import write_json
from data_shards.synthetic.parquet import image_type, jpeg
from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.vocabulary import COLORS

FORMAT = "hf-disk"
CLASSES = tuple(COLORS)[:3]
FEATURES = {"image": {"_type": "Image"}, "label": {"names": list(CLASSES), "_type": "ClassLabel"}}
BATCH_ROWS = 4


def write_split(folder: Path, name: str, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    metadata = {b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode()}
    schema = pa.schema([("image", image_type()), ("label", pa.int64())], metadata=metadata)
    folder.mkdir(parents=True, exist_ok=True)
    file = "data-00000-of-00001.arrow"
    with pa.OSFile(str(folder / file), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(rows), BATCH_ROWS):
            writer.write_batch(pa.RecordBatch.from_pylist(rows[start : start + BATCH_ROWS], schema=schema))
    write_json(folder / "dataset_info.json", {"features": FEATURES, "splits": {name: {"num_examples": len(rows)}}})
    state = {"_data_files": [{"filename": file}], "_split": name, "_format_type": None, "_fingerprint": "synthetic"}
    write_json(folder / "state.json", state)


def write_hf_disk(plan: Plan) -> SyntheticDataset:
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for index in range(plan.n):
        label = index % len(CLASSES)
        image = {"bytes": jpeg(plan.picture(color=CLASSES[label]).image), "path": None}
        rows["test" if index % 4 == 3 else "train"].append({"image": image, "label": label})
    defects = {}
    if plan.defects:
        defects[f"test/data-00000-of-00001/{len(rows['test']):06d}"] = "malformed_record"
        rows["test"].append({"image": {"bytes": jpeg(plan.picture().image), "path": None}, "label": -1})
    root = plan.root / "dataset"
    for name, split_rows in rows.items():
        write_split(root / name, name, split_rows)
    write_json(root / "dataset_dict.json", {"splits": list(rows)})
    return SyntheticDataset(FORMAT, root, None, sum(map(len, rows.values())), defects, {})
