"""Hugging Face datasets in parquet: one file, or a folder of `*.parquet` (searched recursively, in path order:
`data/train-00000-of-00002.parquet`, the_cauldron's `ai2d/train-….parquet`, LLaVA-OneVision-Data's subsets).

Each file is streamed row group by row group (`ParquetFile.iter_batches(row_groups=[g])`, only the columns the
layout needs), so memory holds about one row group, never a whole file: one `iter_batches` call over the whole
file does not bound it (pyarrow 26 holds more than the file's size for image columns). Rows become samples
as `hf_rows` describes; a sample's `split` is the one its file name gives (`train-…`, `test/…`), kept by
`--split-by source`. Embedded images are written under the image root, by default `<input>.images` beside the input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sources.common import SourceOptions
from data_shards.sources.hf_rows import Extractor, RowContext, describe, hf_features, rows_to_samples, split_of

NAME = "parquet"
BATCH_ROWS = 32
DETECT_PATTERNS = ("*.parquet", "*/*.parquet", "*/*/*.parquet")


def detect_folder(path: Path) -> bool:
    return any(next(path.glob(pattern), None) is not None for pattern in DETECT_PATTERNS)


def embedded_image_root(path: Path) -> Path:
    """`<input>.images` beside the input, made when missing (where embedded images are written)."""
    root = path.with_name(path.name + ".images")
    try:
        root.mkdir(exist_ok=True)
    except OSError as error:
        raise SourceError(f"{root}: cannot make the folder for embedded images ({error}); pass --image-root") from None
    return root


def default_image_root(path: Path) -> Path:
    return embedded_image_root(path)


def import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise SourceError("reading parquet and arrow files needs pyarrow: pip install 'pyarrow>=15'") from None
    return pyarrow


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise SourceError(f"{path}: no *.parquet files in this folder or below")
    return files


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    pa = import_pyarrow()
    extractor = Extractor(image_root)
    for file in parquet_files(path):
        relative = file.name if path.is_file() else file.relative_to(path).as_posix()
        try:
            parquet = pa.parquet.ParquetFile(file)
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{file}: not a readable parquet file ({error})") from None
        schema = parquet.schema_arrow
        table = describe(schema, hf_features(schema.metadata), str(file))
        context = RowContext(NAME, relative, split_of(relative), extractor, options)
        yield from rows_to_samples(stream_rows(parquet, table.columns, file), table, context)


def stream_rows(parquet: Any, columns: list[str], file: Path) -> Iterator[dict[str, Any]]:
    """The rows of the named columns, one row group at a time; a file broken past its footer fails naming the row."""
    import pyarrow as pa

    done = 0
    for group in range(parquet.metadata.num_row_groups):
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns, use_threads=False)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as error:
                raise SourceError(f"{file}: row group {group} unreadable after row {done} ({error})") from None
            yield from batch.to_pylist()
            done += batch.num_rows
