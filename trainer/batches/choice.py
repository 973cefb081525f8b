"""Closed-answer samples → prompt-only micro-batches for the choice objective (`train.objective=choice`).

The model sees each sample's conversation up to its final answer with the generation prompt, left-padded, so
the next-token logits at the last position are where the answer would start; the target is the answer's index
in `data.choices`. No answer token is in the input, so none can leak into the prediction. With `swap_choices`
each sample is followed by its twin with the two images in reverse order and the answer mirrored.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from data_shards.sample import Sample, Turn
from trainer.batches.collate import Batch, BatchError, Collator, last_assistant
from trainer.batches.prompts import prompt_inputs
from trainer.chat.tokens import IGNORE_INDEX


def choice_token_ids(collator: Collator, choices: list[str]) -> list[int]:
    """The first token of each choice as the model's template writes it as an answer; they must differ."""
    firsts = []
    for choice in choices:
        probe = Sample("choice-probe", [], [Turn("user", "Which one?"), Turn("assistant", choice)])
        labels = collator.finish(collator.encode([probe]), [probe])["labels"][0]
        firsts.append(int(labels[labels != IGNORE_INDEX][0]))
    tokens = collator.processor.tokenizer.convert_ids_to_tokens(firsts)
    clashes = sorted({(a, tokens[i]) for i, a in enumerate(choices) if firsts.count(firsts[i]) > 1})
    if clashes:
        raise ValueError(f"data.choices {choices}: answers share a first token {clashes}; rename them")
    return firsts


def swapped(sample: Sample, mirror: dict[str, str]) -> Sample:
    """The sample with its two images in reverse order and its final answer mirrored (First ↔ Second)."""
    if len(sample.images) != 2:
        raise BatchError(f"sample {sample.key!r}: train.swap_consistency needs two images, it has {len(sample.images)}")
    turns = list(sample.turns)
    answer = last_assistant(sample)
    turns[answer] = Turn("assistant", mirror[turns[answer].text.strip()])
    return replace(sample, key=f"{sample.key}/swapped", images=sample.images[::-1], turns=turns)


class ChoiceCollator:
    """Picklable (runs in DataLoader workers). Rows: each sample, then (with `swap_choices`) its swapped twin."""

    def __init__(self, collator: Collator, choices: list[str], swap_choices: list[str] | None = None):
        self.collator = collator
        self.choices = list(choices)
        self.mirror = dict(zip(choices, swap_choices)) if swap_choices else None
        self.processor = copy.deepcopy(collator.processor)
        self.processor.tokenizer.padding_side = "left"

    def target(self, sample: Sample) -> int:
        answer = sample.turns[last_assistant(sample)].text.strip()
        if answer not in self.choices:
            raise BatchError(f"sample {sample.key!r}: answer {answer!r} is not one of data.choices {self.choices}")
        return self.choices.index(answer)

    def rows(self, sample: Sample) -> list[Sample]:
        return [sample, swapped(sample, self.mirror)] if self.mirror else [sample]

    def __call__(self, samples: list[Sample]) -> Batch:
        for sample in samples:
            self.target(sample)
        inputs = self.encode(samples)
        too_long = self.too_long(samples, inputs)
        kept = [s for s in samples if s.key not in too_long]
        if too_long:
            inputs = self.encode(kept)
        if not kept:
            return Batch({}, [], sorted(too_long))
        targets = torch.tensor([self.target(row) for s in kept for row in self.rows(s)])
        tokens = int(inputs["attention_mask"].sum())
        return Batch(inputs, [s.key for s in kept], sorted(too_long), tokens, inputs["input_ids"].numel(), targets)

    def encode(self, samples: list[Sample]) -> dict[str, torch.Tensor] | None:
        rows = [row for s in samples for row in self.rows(s)]
        return prompt_inputs(self.collator, self.processor, rows) if rows else None

    def too_long(self, samples: list[Sample], inputs: dict[str, torch.Tensor] | None) -> set[str]:
        """Keys of samples whose prompt (images expanded) exceeds model.max_length: dropped whole, never cut."""
        if inputs is None:
            return set()
        lengths = inputs["attention_mask"].sum(dim=1).view(len(samples), -1).max(dim=1).values.tolist()
        return {s.key for s, n in zip(samples, lengths) if n > self.collator.max_length}
