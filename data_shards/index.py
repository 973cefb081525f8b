"""A split's shard index (`{split}/index.json`): its file name, and writing and reading the document.

Shared by the writer (`data_shards.write`) and the readers (`data_shards.stream`, `data_shards.inspect`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data_shards.sample import SCHEMA_VERSION

INDEX_NAME = "index.json"


def save_index(split_dir: Path, index: dict[str, Any]) -> Path:
    """Writes the index document to `split_dir/index.json` atomically (through a `.tmp` file and a rename)."""
    path = split_dir / INDEX_NAME
    tmp = path.with_name(INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no shard index (build the shards first)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: corrupt shard index ({error.msg} at line {error.lineno})") from None
    if index.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema {index.get('schema_version')}, this code reads {SCHEMA_VERSION}")
    return index
