"""Samples → model batch through the model's own processor and chat template.

Labels keep only assistant answers (the template's `{% generation %}` spans). Every batch is
checked: each sample keeps at least one supervised token, and its image tokens match what its
images produce — otherwise a `BatchError` names the sample, instead of a silent loss of 0 or the
model's "image features and image tokens do not match" deep in the forward. Samples longer than
`max_length` are dropped whole and counted (truncation would cut image tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature

from data_shards.sample import IMAGE_TOKEN, Sample

IGNORE_INDEX = -100


class BatchError(ValueError):
    pass


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    keys: list[str]
    dropped: list[str] = field(default_factory=list)
    num_tokens: int = 0
    num_slots: int = 0

    def __len__(self) -> int:
        return len(self.keys)


def conversation(sample: Sample, with_answer: bool = True) -> list[dict[str, Any]]:
    """Chat messages with typed parts; each `<image>` placeholder becomes the next image, in order."""
    if sample.placeholder_count() != len(sample.images):
        raise BatchError(f"sample {sample.key!r}: {sample.placeholder_count()} {IMAGE_TOKEN} placeholders "
                         f"for {len(sample.images)} images")
    images = iter(sample.images)
    turns = sample.turns if with_answer else sample.turns[:last_assistant(sample)]
    messages = []
    for turn in turns:
        parts = []
        for position, text in enumerate(turn.text.split(IMAGE_TOKEN)):
            if position:
                parts.append({"type": "image", "image": next(images).decode()})
            text = text.lstrip("\n") if position else text
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": turn.role, "content": parts})
    return messages


def last_assistant(sample: Sample) -> int:
    for index in range(len(sample.turns) - 1, -1, -1):
        if sample.turns[index].role == "assistant":
            return index
    raise BatchError(f"sample {sample.key!r} has no assistant turn")


class Collator:
    """Picklable (runs in DataLoader workers): holds the processor and the per-image token check."""

    def __init__(self, processor, max_length: int, image_token_id: int | None, tokens_per_image=None,
                 packing: bool = False):
        self.processor = processor
        self.max_length = max_length
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image
        self.packing = packing

    def encode(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """The processor's encoding as tensors. Converted here, after the assistant masks are made: asked for
        tensors, transformers builds the masks by iterating offset-mapping tensors element by element, which
        took three quarters of the collate time."""
        encoded = self.processor.apply_chat_template(
            [conversation(s) for s in samples], tokenize=True, return_dict=True, return_tensors=None,
            return_assistant_tokens_mask=True, processor_kwargs={"padding": True},
        )
        return BatchFeature(dict(encoded), tensor_type="pt")

    def __call__(self, samples: list[Sample]) -> Batch:
        dropped, kept = [], list(samples)
        encoded = self.encode(kept) if kept else None
        if encoded is not None:
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            too_long = [s.key for s, n in zip(kept, lengths) if n > self.max_length]
            if too_long:
                dropped = too_long
                kept = [s for s in kept if s.key not in too_long]
                encoded = self.encode(kept) if kept else None
        if encoded is None:
            return Batch({}, [], dropped)
        inputs = self.finish(encoded, kept)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        if self.packing:
            inputs = pack(inputs, lengths, [len(s.images) for s in kept], self.max_length,
                          self.processor.tokenizer.pad_token_id)
        slots = inputs["input_ids"].numel()
        return Batch(inputs, [s.key for s in kept], dropped, int(sum(lengths)), slots)

    def finish(self, encoded: dict[str, torch.Tensor], samples: list[Sample]) -> dict[str, torch.Tensor]:
        mask = encoded.pop("assistant_masks").bool() & encoded["attention_mask"].bool()
        for row, sample in enumerate(samples):
            if not mask[row].any():
                raise BatchError(f"sample {sample.key!r}: no supervised token (the chat template marks no "
                                 "assistant answer with {% generation %}, or the answer is empty)")
        self.check_image_tokens(encoded, samples)
        encoded["labels"] = torch.where(mask, encoded["input_ids"], IGNORE_INDEX)
        return dict(encoded)

    def check_image_tokens(self, encoded: dict[str, torch.Tensor], samples: list[Sample]) -> None:
        if self.image_token_id is None or self.tokens_per_image is None:
            return
        found = (encoded["input_ids"] == self.image_token_id).sum(dim=1).tolist()
        expected = self.tokens_per_image(encoded, samples)
        for sample, have, want in zip(samples, found, expected):
            if have != want:
                raise BatchError(f"sample {sample.key!r}: {have} image tokens in the text but its "
                                 f"{len(sample.images)} images give {want} features")


PER_TOKEN = ("input_ids", "attention_mask", "labels")
PER_IMAGE = ("pixel_values", "image_sizes")  # one entry per image, the batch's images in sample order


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


def pack(inputs: dict[str, torch.Tensor], lengths: list[int], images_per_sample: list[int], max_length: int,
         pad_id: int) -> dict[str, torch.Tensor]:
    """Several samples per row, no attention mask: position ids restart at each sample, which the model's
    attention turns into a block-diagonal causal mask (sdpa, eager) or variable-length kernels (flash).
    transformers detects this only without a KV cache: forward with `use_cache=False`. Rows may take
    samples out of batch order; the per-image inputs are reordered with them, since the model hands the
    image features to the image tokens in reading order."""
    unknown = [k for k in inputs if k not in PER_TOKEN and k not in PER_IMAGE]
    if unknown:
        raise BatchError(f"cannot pack: inputs {unknown} have no packed form (set data.packing=false)")
    rows = packed_rows(lengths, max_length)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=inputs["input_ids"].dtype)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=inputs["labels"].dtype)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            real = inputs["attention_mask"][index].bool()
            input_ids[row, offset:offset + lengths[index]] = inputs["input_ids"][index][real]
            labels[row, offset:offset + lengths[index]] = inputs["labels"][index][real]
            positions[row, offset:offset + lengths[index]] = torch.arange(lengths[index])
            offset += lengths[index]
        positions[row, offset:] = torch.arange(width - offset)
    images = image_order([index for row in rows for index in row], images_per_sample)
    per_image = {k: inputs[k][images] for k in PER_IMAGE if k in inputs}
    return {**per_image, "input_ids": input_ids, "labels": labels, "position_ids": positions}


def image_order(sample_order: list[int], images_per_sample: list[int]) -> torch.Tensor:
    """Indices of the batch's images when its samples are read in `sample_order`."""
    starts = np.concatenate([[0], np.cumsum(images_per_sample)]).astype(int)
    return torch.tensor([i for s in sample_order for i in range(starts[s], starts[s + 1])], dtype=torch.long)


def packing_problem(model_config) -> str | None:
    """Why packing cannot work for this model, or None: 3-D multimodal rotary positions cannot restart per sample."""
    text = getattr(model_config, "text_config", model_config)
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if isinstance(rope, dict) and "mrope_section" in rope:
        return f"{model_config.model_type} uses multimodal rotary positions (mrope); set data.packing=false"
    return None


@dataclass
class FixedCount:
    """Families whose every image gives the same number of features (LLaVA-1.5: image_seq_length)."""

    count: int

    def __call__(self, encoded, samples) -> list[int]:
        return [self.count * len(s.images) for s in samples]


@dataclass
class GridCount:
    """Qwen2-VL-style: an image of grid t×h×w patches gives t·h·w / merge² features."""

    merge: int

    def __call__(self, encoded, samples) -> list[int]:
        per_image = (encoded["image_grid_thw"].prod(dim=1) // (self.merge ** 2)).tolist() if "image_grid_thw" in encoded else []
        counts, start = [], 0
        for sample in samples:
            counts.append(int(sum(per_image[start:start + len(sample.images)])))
            start += len(sample.images)
        return counts


def token_check_for(model_config) -> tuple[int | None, Any]:
    """The image token id and feature-count rule from the model's config (None where the count varies)."""
    image_token = getattr(model_config, "image_token_id", None) or getattr(model_config, "image_token_index", None)
    vision = getattr(model_config, "vision_config", None)
    merge = getattr(vision, "spatial_merge_size", None)
    if merge:
        return image_token, GridCount(merge)
    if getattr(model_config, "image_grid_pinpoints", None) is None and getattr(model_config, "image_seq_length", None):
        return image_token, FixedCount(model_config.image_seq_length)
    return image_token, None
