"""The fp32 weights of a DeepSpeed ZeRO-2/3 checkpoint, one tensor at a time, in bounded memory.

Consolidating a full fine-tune must hold little more than the model being built. Both stages keep
their fp32 master weights in per-rank optimizer files, which are memory-mapped here: only the pages
a tensor is copied from are read, and since read pages stay resident while a mapping lives, the files
are reopened after every 1/`chunks` of the bytes handed out.

ZeRO-2: rank r's file holds the r-th slice of each parameter group's flat fp32 vector; a parameter
is a contiguous range of that vector (the slices concatenated in rank order, plus the alignment
padding the optimizer recorded), copied out of the one or few slices it spans. DeepSpeed's own
reader instead concatenates every slice and loads the model-states file whole, which holds the model
three times over. ZeRO-3: DeepSpeed's lazy reader gathers one tensor at a time.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch


class ZeroCheckpointError(ValueError):
    """The checkpoint's files do not describe the weights consistently; the message names the file."""


@dataclass(frozen=True)
class FlatParameter:
    name: str
    shape: torch.Size
    group: int
    start: int  # in the group's flat vector (all ranks' slices concatenated)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def zero_tensors(checkpoint: Path, chunks: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor owning its storage) for every parameter and buffer of the checkpoint: trainable ones in
    fp32, frozen ones in the dtype they were trained in."""
    tensors = zero2_tensors(checkpoint, chunks) if zero_stage(checkpoint) <= 2 else zero3_tensors(checkpoint, chunks)
    shared = load_mapped(model_state_file(checkpoint)).get("shared_params", {})  # tied: alias -> owner
    owners, names = {}, set()
    for name, tensor in tensors:
        if name in shared.values():
            owners[name] = tensor
        names.add(name)
        yield name, tensor
    for alias, owner in shared.items():
        if owner in owners and alias not in names:
            yield alias, owners[owner]


def load_mapped(path: Path | str) -> dict:
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def model_state_file(checkpoint: Path) -> str:
    from deepspeed.utils.zero_to_fp32 import get_model_state_files

    return get_model_state_files(str(checkpoint))[0]


def optimizer_files(checkpoint: Path) -> list[str]:
    from deepspeed.utils.zero_to_fp32 import get_optim_files

    return get_optim_files(str(checkpoint))


def zero_stage(checkpoint: Path) -> int:
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, ZERO_STAGE

    first = optimizer_files(checkpoint)[0]
    stage = load_mapped(first)[OPTIMIZER_STATE_DICT].get(ZERO_STAGE)
    if stage is None:
        raise ZeroCheckpointError(f"{first}: not a ZeRO optimizer state (no {ZERO_STAGE})")
    return stage


# ---------------------------------------------------------------------------------------------- ZeRO-2


def zero2_tensors(checkpoint: Path, chunks: int) -> Iterator[tuple[str, torch.Tensor]]:
    from deepspeed.checkpoint.constants import BUFFER_NAMES, FROZEN_PARAM_FRAGMENTS

    model_state = load_mapped(model_state_file(checkpoint))
    for name in model_state[BUFFER_NAMES]:
        buffer = model_state["module"][name]
        yield name, (buffer.float() if buffer.is_floating_point() else buffer.clone())
    for name, fragment in (model_state.get(FROZEN_PARAM_FRAGMENTS) or {}).items():
        yield name, fragment.clone()
    slices = zero2_slices(checkpoint)
    parameters = zero2_layout(checkpoint, model_state, slices)
    budget, taken = sum(p.numel for p in parameters) / chunks, 0
    for parameter in parameters:
        if taken >= budget:
            slices, taken = None, 0  # unmaps the pages read so far
            slices = zero2_slices(checkpoint)
        taken += parameter.numel
        yield (
            parameter.name,
            copy_range(slices[parameter.group], parameter.start, parameter.numel).view(parameter.shape),
        )


def zero2_slices(checkpoint: Path) -> list[list[torch.Tensor]]:
    """Per parameter group, each rank's slice of the flat fp32 vector (memory-mapped)."""
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, SINGLE_PARTITION_OF_FP32_GROUPS

    per_rank = [
        load_mapped(f)[OPTIMIZER_STATE_DICT][SINGLE_PARTITION_OF_FP32_GROUPS] for f in optimizer_files(checkpoint)
    ]
    return [list(group) for group in zip(*per_rank)]


def zero2_layout(checkpoint: Path, model_state: dict, slices: list[list[torch.Tensor]]) -> list[FlatParameter]:
    """Where each trainable parameter lies in its group's flat vector, checked against the vector's size."""
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, PARAM_ALIGNMENT_PADDINGS, PARAM_SHAPES

    files = optimizer_files(checkpoint)
    paddings = load_mapped(files[0])[OPTIMIZER_STATE_DICT].get(PARAM_ALIGNMENT_PADDINGS)
    sizes = [sum(s.numel() for s in group) for group in slices]
    layout = []
    for group, shapes in enumerate(model_state[PARAM_SHAPES]):
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            layout.append(FlatParameter(name, torch.Size(shape), group, offset))
            offset += math.prod(shape) + (paddings[group][index] if paddings else 0)
        align = 2 * len(files)  # ZeRO-2 pads each group's vector to a multiple of twice the world size
        if math.ceil(offset / align) != math.ceil(sizes[group] / align):
            raise ZeroCheckpointError(
                f"{files[0]}: parameter group {group} holds {sizes[group]} values, but its "
                f"{len(shapes)} parameters take {offset}"
            )
    return layout


def copy_range(slices: list[torch.Tensor], start: int, numel: int) -> torch.Tensor:
    """Values [start, start + numel) of the slices concatenated, copied into one new tensor."""
    out, filled, slice_start = torch.empty(numel, dtype=slices[0].dtype), 0, 0
    for part in slices:
        low, high = max(start, slice_start), min(start + numel, slice_start + part.numel())
        if low < high:
            out[low - start : high - start] = part[low - slice_start : high - slice_start]
            filled += high - low
        slice_start += part.numel()
    if filled != numel:
        raise ZeroCheckpointError(f"values {start}..{start + numel} lie beyond the {slice_start} of the group")
    return out


# ---------------------------------------------------------------------------------------------- ZeRO-3


def zero3_tensors(checkpoint: Path, chunks: int) -> Iterator[tuple[str, torch.Tensor]]:
    """DeepSpeed's lazy reader: frozen tensors first (whole), then one gathered tensor at a time."""
    from deepspeed.utils.zero_to_fp32 import GatheredTensor

    lazy = open_zero3(checkpoint, frozen=True)
    gathered = [name for name, value in lazy.items() if isinstance(value, GatheredTensor)]
    for name in [name for name in lazy if name not in set(gathered)]:
        yield name, lazy.pop(name).clone()
    budget, taken = sum(lazy[name].shape.numel() for name in gathered) / chunks, 0
    for name in gathered:
        if taken >= budget:
            lazy = None  # unmaps the pages read so far
            lazy, taken = open_zero3(checkpoint, frozen=False), 0
        tensor = lazy.pop(name).contiguous()
        taken += tensor.numel()
        yield name, tensor


def open_zero3(checkpoint: Path, frozen: bool) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints its progress on stdout
        return get_fp32_state_dict_from_zero_checkpoint(
            str(checkpoint.parent), tag=checkpoint.name, exclude_frozen_parameters=not frozen, lazy_mode=True
        )
