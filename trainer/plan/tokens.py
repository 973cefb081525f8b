"""Token lengths of the training data as the trainer will see them: samples of `data.train` collated one by one
with the run's own collator (chat template, image tokens expanded as the model's processor does)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import numpy as np

from data_shards.stream import Skipped, StreamConfig
from data_shards.stream.mix import open_split
from trainer.chat.tokens import IGNORE_INDEX
from trainer.config.schema import TrainConfig


@dataclass(frozen=True)
class TokenLengths:
    """`longest` sizes the activations: a padded micro batch is as long as its longest sample (with packing,
    every row is `model.max_length`). Samples longer than `model.max_length` are dropped by training and here."""

    measured: int
    longest: int
    p95: float
    mean: float
    supervised_max: int
    supervised_fraction: float
    image_tokens_max: int
    dropped: int
    source: str


def given(tokens: int, supervised: int | None = None) -> TokenLengths:
    """Lengths stated instead of measured; without `supervised`, every token is supervised (an upper bound)."""
    supervised = tokens if supervised is None else supervised
    return TokenLengths(0, tokens, tokens, tokens, supervised, supervised / tokens, 0, 0, "--tokens")


def measure(config: TrainConfig, model, processor, limit: int) -> TokenLengths:
    from trainer.train.loaders import make_collator

    collator = make_collator(processor, model, config)
    stream = open_split(config.data.train, config=StreamConfig(shuffle=False), rank=0, world_size=1)
    lengths, supervised, images, dropped = [], [], [], 0
    for sample in islice((s for s in stream if not isinstance(s, Skipped)), limit):
        batch = collator([sample])
        if batch.dropped:
            dropped += 1
            continue
        lengths.append(batch.num_tokens)
        supervised.append(int((batch.inputs["labels"][:, 1:] != IGNORE_INDEX).sum()))
        if collator.image_token_id is not None:
            images.append(int((batch.inputs["input_ids"] == collator.image_token_id).sum()))
    if not lengths:
        raise ValueError(f"data.train={config.data.train}: no sample fits model.max_length={config.model.max_length}")
    return TokenLengths(
        measured=len(lengths),
        longest=max(lengths),
        p95=float(np.percentile(lengths, 95)),
        mean=float(np.mean(lengths)),
        supervised_max=max(supervised),
        supervised_fraction=sum(supervised) / sum(lengths),
        image_tokens_max=max(images, default=0),
        dropped=dropped,
        source=f"{config.data.train} (first {len(lengths) + dropped} samples)",
    )


def row_tokens(lengths: TokenLengths, config: TrainConfig) -> tuple[int, int]:
    """(tokens, supervised tokens) per row of a micro batch: the longest sample and the most supervised one, or
    `model.max_length` at the measured supervised fraction when packing; the choice objective's head reads one
    position per row."""
    if config.data.packing:
        tokens = config.model.max_length
        supervised = round(lengths.supervised_fraction * tokens)
    else:
        tokens = min(lengths.longest, config.model.max_length)
        supervised = min(lengths.supervised_max, tokens)
    return tokens, 1 if config.train.objective == "choice" else supervised
