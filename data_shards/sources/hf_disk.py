"""A Hugging Face `save_to_disk` folder: a Dataset (`dataset_info.json`, `state.json`, `data-*.arrow`) or a
DatasetDict (`dataset_dict.json` naming split folders that each hold a Dataset).

The `.arrow` files are arrow IPC streams, memory-mapped and read one record batch at a time (`pyarrow.ipc.open_stream`),
so memory holds about one batch. Rows become samples as `hf_rows` describes, with `split` the DatasetDict's split
name or the Dataset's own (`state.json` `_split`). Class names come from `dataset_info.json`'s features, else the
arrow schema's. Embedded images are written under the image root, by default `<input>.images` beside the input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sources.common import SourceOptions, load_json
from data_shards.sources.hf_rows import Extractor, RowContext, describe, hf_features, rows_to_samples
from data_shards.sources.parquet import embedded_image_root, import_pyarrow

NAME = "hf-disk"
DICT_FILE, STATE_FILE, INFO_FILE = "dataset_dict.json", "state.json", "dataset_info.json"


def detect_folder(path: Path) -> bool:
    return (path / DICT_FILE).is_file() or ((path / STATE_FILE).is_file() and (path / INFO_FILE).is_file())


def default_image_root(path: Path) -> Path:
    return embedded_image_root(path)


def split_folders(path: Path) -> list[tuple[str | None, Path]]:
    if (path / DICT_FILE).is_file():
        document = load_json(path / DICT_FILE)
        splits = document.get("splits") if isinstance(document, dict) else None
        if not isinstance(splits, list) or not all(isinstance(name, str) for name in splits):
            raise SourceError(f"{path / DICT_FILE}: 'splits' must be a list of split names")
        return [(name, path / name) for name in splits]
    if not (path / STATE_FILE).is_file():
        raise SourceError(f"{path}: neither {DICT_FILE} nor {STATE_FILE}: not a save_to_disk folder")
    state = load_json(path / STATE_FILE)
    split = state.get("_split") if isinstance(state, dict) else None
    return [(split if isinstance(split, str) else None, path)]


def arrow_files(folder: Path) -> list[Path]:
    """The files state.json lists, in its order (else `data-*.arrow` sorted); a listed file that is absent fails."""
    state = load_json(folder / STATE_FILE) if (folder / STATE_FILE).is_file() else {}
    listed = state.get("_data_files") if isinstance(state, dict) else None
    if isinstance(listed, list) and listed:
        files = [folder / str(entry.get("filename", "")) for entry in listed if isinstance(entry, dict)]
        absent = [file.name for file in files if not file.is_file()]
        if absent:
            raise SourceError(f"{folder / STATE_FILE}: lists data files that do not exist: {absent[:3]}")
        return files
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise SourceError(f"{folder}: no data-*.arrow files")
    return files


def info_features(folder: Path) -> dict[str, Any]:
    info = load_json(folder / INFO_FILE) if (folder / INFO_FILE).is_file() else {}
    features = info.get("features") if isinstance(info, dict) else None
    return features if isinstance(features, dict) else {}


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    if not path.is_dir():
        raise SourceError(f"{path}: the {NAME} format expects a save_to_disk folder")
    import_pyarrow()
    extractor = Extractor(image_root)
    for split, folder in split_folders(path):
        features = info_features(folder)
        for file in arrow_files(folder):
            relative = file.relative_to(path).as_posix()
            context = RowContext(NAME, relative, split, extractor, options)
            yield from read_arrow(file, features, context)


def read_arrow(file: Path, features: dict[str, Any], context: RowContext) -> Iterator[RawSample | Reject]:
    import pyarrow as pa

    with pa.memory_map(str(file)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{file}: not an arrow IPC stream ({error})") from None
        table = describe(reader.schema, features or hf_features(reader.schema.metadata), str(file))
        yield from rows_to_samples(stream_rows(reader, table.columns, file), table, context)


def stream_rows(reader: Any, columns: list[str], file: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    done = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{file}: unreadable after row {done} ({error})") from None
        yield from batch.select(columns).to_pylist()
        done += batch.num_rows
