"""Rendered conversations → token ids through the model's processor, with answer spans as a token mask.

Training batches and inference prompts are tokenized by the same call, so the prompt tokens a model is
trained on are the tokens `predict` and `evaluate` give it.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
from transformers import BatchFeature

IGNORE_INDEX = -100  # labels of tokens not trained on
OFFSETS = "offset_mapping"
REPLACEMENTS = "text_replacement_offsets"


def tokenize(
    processor, texts: list[str], images: list[list[Any]] | None, spans: list[list[tuple[int, int]]] | None = None
) -> BatchFeature:
    """The processor's encoding of `texts` (padded, as tensors); with `spans`, also `answer_mask`: the tokens that
    overlap each row's character spans, placeholders the processor expanded taken into account.

    As transformers does for chat templates, special tokens are added only when the text does not already start
    with the tokenizer's bos token."""
    bos = processor.tokenizer.bos_token
    options = {"padding": True, "add_special_tokens": not (bos and texts and texts[0].startswith(bos))}
    if spans is not None:
        options.update(return_offsets_mapping=True, return_text_replacement_offsets=True)
    has_images = images is not None and any(images)
    encoded = dict(processor(text=list(texts), images=images if has_images else None, **options))
    if spans is not None:
        offsets = encoded.pop(OFFSETS)
        replacements = encoded.pop(REPLACEMENTS, None) or [[] for _ in texts]
        encoded["answer_mask"] = [
            token_mask(np.asarray(o).reshape(-1, 2), s, r) for o, s, r in zip(offsets, spans, replacements)
        ]
    return BatchFeature(encoded, tensor_type="pt")


def token_mask(offsets: np.ndarray, spans: list[tuple[int, int]], replacements: list[dict]) -> list[int]:
    """1 for each token whose characters overlap a span; spans are in the text before placeholders were expanded,
    token offsets after. Zero-width tokens (padding, added specials) never overlap."""
    ends = [r["span"][1] for r in replacements]
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        start += gained[bisect.bisect_right(ends, start)]
        end += gained[bisect.bisect_right(ends, end - 1)]
        mask |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
    return mask.astype(np.int64).tolist()
