"""A model folder's safetensors weights, read one tensor at a time with plain file reads.

Loading through a memory map keeps every page read resident until the map closes, so casting an fp32
base to bf16 while loading it holds the fp32 file and the bf16 model at once (three times the
output). Read into a buffer of its own, a tensor costs its own size, and only while it is converted.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    start: int  # byte offset in the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class SafetensorsWeights:
    def __init__(self, tensors: dict[str, StoredTensor]):
        self.tensors = tensors

    @classmethod
    def open(cls, folder: Path | str) -> SafetensorsWeights | None:
        """The folder's weights (one file or an index of shards); None where it has no safetensors of its own
        (a hub id, other formats)."""
        folder = Path(folder)
        if (folder / INDEX).is_file():
            files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        elif (folder / SINGLE).is_file():
            files = [SINGLE]
        else:
            return None
        tensors = {}
        for name in files:
            tensors.update(header(folder / name))
        return cls(tensors)

    def model_names(self, model) -> dict[str, str] | None:
        """The model's name of each stored tensor → the stored name, by transformers' own renaming rules for
        the architecture (transformers 5 saves some, LLaVA among them, under their older names). None where
        the stored tensors do not map one to one onto the model's state dict, e.g. where transformers merges or
        splits tensors while loading."""
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        if not all(isinstance(transform, WeightRenaming) for transform in transforms):
            return None
        own = model.state_dict()
        renamed = {
            rename_source_key(name, transforms, [], model.base_model_prefix, own)[0]: name for name in self.tensors
        }
        return renamed if len(renamed) == len(self.tensors) and set(renamed) <= set(own) else None

    def read(self, name: str) -> torch.Tensor:
        stored = self.tensors[name]
        raw = torch.empty(stored.nbytes, dtype=torch.uint8)
        with stored.file.open("rb") as handle:
            handle.seek(stored.start)
            if handle.readinto(memoryview(raw.numpy())) != stored.nbytes:
                raise OSError(f"{stored.file}: truncated inside tensor {name}")
        return raw.view(stored.dtype).reshape(stored.shape)


def header(path: Path) -> dict[str, StoredTensor]:
    """Name → where and what, from a safetensors file's JSON header (8-byte little-endian length first)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        entries = json.loads(handle.read(length))
    entries.pop("__metadata__", None)
    data_start = 8 + length
    tensors = {}
    for name, entry in entries.items():
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, which this reader does not know")
        begin, end = entry["data_offsets"]
        tensors[name] = StoredTensor(
            path, data_start + begin, end - begin, SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"])
        )
    return tensors
