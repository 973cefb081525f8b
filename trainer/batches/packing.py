"""Several samples per row: rows balanced by length, position ids restarted per sample.

With position ids that restart and no attention mask, transformers' attention keeps each sample to
itself (a block-diagonal causal mask for sdpa/eager, variable-length kernels for flash); it detects
this only without a KV cache, so packed batches are run with `use_cache=False`. Models with 3-D
multimodal rotary positions (mRoPE: Qwen2-VL, Qwen2.5-VL) get each sample's temporal/height/width
positions restarted too, with the text positions in front, as their forward expects for packing.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from trainer.chat.tokens import IGNORE_INDEX

PER_TOKEN = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")
PER_IMAGE = ("pixel_values", "image_sizes", "image_grid_thw")  # the batch's images in sample order
# Idefics3: pixel values (samples, images, C, H, W) and this mask are one entry per sample, its images padded
# with all-zero ones that the model drops
PER_SAMPLE = ("pixel_attention_mask",)


class PackingError(ValueError):
    pass


def mrope_merge(model_config) -> int | None:
    """The vision merge size of a model with multimodal rotary positions, else None."""
    text = getattr(model_config, "text_config", model_config)
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if isinstance(rope, dict) and "mrope_section" in rope:
        return model_config.vision_config.spatial_merge_size
    return None


def packed_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """The samples of a micro-batch in the fewest rows of at most `max_length` tokens that a greedy
    balance finds: longest first, each into the row with the fewest tokens so far, so that rows come
    out alike in length (little padding). Samples within a row keep their batch order."""
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    for count in range(max(1, -(-sum(lengths) // max_length)), len(lengths) + 1):
        rows: list[list[int]] = [[] for _ in range(count)]
        totals = [0] * count
        for index in order:
            lightest = totals.index(min(totals))
            rows[lightest].append(index)
            totals[lightest] += lengths[index]
        if max(totals) <= max_length:
            return sorted((sorted(row) for row in rows if row), key=lambda row: row[0])
    return [[index] for index in range(len(lengths))]


def pack(
    inputs: dict[str, torch.Tensor],
    lengths: list[int],
    images_per_sample: list[int],
    max_length: int,
    pad_id: int,
    mrope_merge: int | None = None,
) -> dict[str, torch.Tensor]:
    """Rows of packed samples, no attention mask. Rows may take samples out of batch order; the per-image inputs
    are reordered with them, since the model hands the image features to the image tokens in reading order."""
    unknown = [k for k in inputs if k not in (*PER_TOKEN, *PER_IMAGE, *PER_SAMPLE)]
    if unknown:
        raise PackingError(f"cannot pack: inputs {unknown} have no packed form (set data.packing=false)")
    rows = packed_rows(lengths, max_length)
    order = [index for row in rows for index in row]
    grids = image_grids(inputs, images_per_sample)
    width = max(sum(lengths[i] for i in row) for row in rows)
    fills = {"input_ids": pad_id, "labels": IGNORE_INDEX, "mm_token_type_ids": 0, "token_type_ids": 0}
    packed = {k: torch.full((len(rows), width), fills[k], dtype=inputs[k].dtype) for k in fills if k in inputs}
    positions = torch.zeros((4 if mrope_merge else 1, len(rows), width), dtype=torch.long)
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            real = inputs["attention_mask"][index].bool()
            for key, value in packed.items():
                value[row, offset : offset + lengths[index]] = inputs[key][index][real]
            span = slice(offset, offset + lengths[index])
            positions[:, row, span] = sample_positions(packed, row, span, grids[index], mrope_merge)
            offset += lengths[index]
        positions[:, row, offset:] = torch.arange(width - offset)
    packed["position_ids"] = positions if mrope_merge else positions[0]
    return {**reorder_images(inputs, order, images_per_sample), **packed}


def sample_positions(packed, row: int, span: slice, grids: list, merge: int | None) -> torch.Tensor:
    """Position ids of one sample in its row, from 0: 1-D, or text positions then mRoPE's three sections."""
    length = span.stop - span.start
    text = torch.arange(length)
    if not merge:
        return text[None]
    types = packed["mm_token_type_ids"][row, span].tolist() if "mm_token_type_ids" in packed else [0] * length
    return torch.cat([text[None], mrope_positions(types, grids, merge)])


def mrope_positions(types: list[int], grids: list[list[int]], merge: int) -> torch.Tensor:
    """Qwen2-VL's 3-D positions for one sample: text tokens count up on all three sections; an image's tokens
    take its grid's (t, h, w) indices after the text before it, which then continues past the image's larger
    side. `types` marks image tokens with 1 (the processor's mm_token_type_ids)."""
    sections, current, images = [], 0, iter(grids)
    for kind, group in itertools.groupby(types):
        count = len(list(group))
        if kind == 0:
            sections.append(torch.arange(count).expand(3, -1) + current)
            current += count
            continue
        t, h, w = next(images)
        h, w = h // merge, w // merge
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
        sections.append(grid.reshape(3, -1) + current)
        current += max(h, w)
    return torch.cat(sections, dim=1) if sections else torch.zeros((3, 0), dtype=torch.long)


def image_grids(inputs: dict[str, torch.Tensor], images_per_sample: list[int]) -> list[list[list[int]]]:
    """Each sample's image grids (t, h, w), empty lists when the model has none."""
    grids = inputs["image_grid_thw"].tolist() if "image_grid_thw" in inputs else []
    starts = np.concatenate([[0], np.cumsum(images_per_sample)]).astype(int)
    return [grids[starts[s] : starts[s + 1]] for s in range(len(images_per_sample))]


def reorder_images(inputs: dict[str, torch.Tensor], sample_order: list[int], images_per_sample: list[int]):
    """The per-image inputs for the samples read in `sample_order`. Qwen2-VL's pixel values are one row per
    patch (an image's rows: its grid's t·h·w), Idefics3's one entry per sample (PER_SAMPLE), the others one
    entry per image."""
    if any(key in inputs for key in PER_SAMPLE):
        return {k: inputs[k][sample_order] for k in ("pixel_values", *PER_SAMPLE) if k in inputs}
    starts = np.concatenate([[0], np.cumsum(images_per_sample)]).astype(int)
    images = [i for s in sample_order for i in range(starts[s], starts[s + 1])]
    out = {k: inputs[k][images] for k in PER_IMAGE if k in inputs}
    if "image_grid_thw" in inputs and "pixel_values" in inputs:
        patches = inputs["image_grid_thw"].prod(dim=1).tolist()
        first = np.concatenate([[0], np.cumsum(patches)]).astype(int)
        rows = [r for i in images for r in range(first[i], first[i + 1])]
        out["pixel_values"] = inputs["pixel_values"][rows]
    return out
