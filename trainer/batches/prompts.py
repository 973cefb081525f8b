"""Prompts as training tokenizes them: a conversation up to its final answer, with the generation prompt."""

from __future__ import annotations

import torch

from data_shards.sample import Sample
from trainer.batches.collate import Collator, messages, prompt_images, question
from trainer.chat.tokens import tokenize


def prompt_inputs(collator: Collator, processor, samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Each sample's conversation up to its last answer with the generation prompt, tokenized as training
    tokenizes (`processor` left-padding), so a prompt is exactly the tokens training puts before that answer."""
    asked = [question(s) for s in samples]
    texts = [collator.answers.prompt(messages(s)) for s in asked]
    inputs = dict(tokenize(processor, texts, [prompt_images(s) for s in asked]))
    if collator.blank_image is not None and not any(s.images for s in asked):
        inputs = collator.blank_image.add(inputs, left=True)
    return inputs
