"""Evaluation during training: teacher-forced loss and greedy exact-match accuracy on the val split.

Every rank evaluates its slice of the split (equal counts by construction, so ZeRO-3's collective
forwards stay in step; `synced_gpus` keeps generation in step too); results are gathered and
de-duplicated by sample key, so the padding that equalises ranks is not counted twice.
"""

from __future__ import annotations

import contextlib
import copy
import string
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data_shards.sample import Sample
from trainer.batches.collate import Batch, Collator, last_assistant
from trainer.batches.prompts import prompt_inputs
from trainer.train.objectives import LanguageModelLoss

TEACHER_FORCED = LanguageModelLoss()  # the training loss: summed over supervised tokens, the head only there


def normalise(text: str) -> str:
    return text.strip().strip(string.punctuation + " ").lower()


@dataclass
class EvalBatch:
    batch: Batch
    prompts: dict[str, torch.Tensor] | None
    answers: list[str]


class EvalCollator:
    """A training batch (for the loss) plus left-padded prompts without the final answer (for generation)."""

    def __init__(self, collator: Collator):
        self.collator = collator
        self.processor = copy.deepcopy(collator.processor)
        self.processor.tokenizer.padding_side = "left"

    def __call__(self, samples: list[Sample]) -> EvalBatch:
        batch = self.collator(samples)
        kept = [s for s in samples if s.key in set(batch.keys)]
        if not kept:
            return EvalBatch(batch, None, [])
        prompts = prompt_inputs(self.collator, self.processor, kept)
        answers = [s.turns[last_assistant(s)].text for s in kept]
        return EvalBatch(batch, prompts, answers)


def move(inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    moved = {}
    for key, value in inputs.items():
        value = value.to(device)
        moved[key] = value.to(dtype) if value.is_floating_point() else value
    return moved


@torch.no_grad()
def evaluate(
    engine, loader, tokenizer, max_batches: int, max_new_tokens: int, synced: bool, keep_train_mode: bool
) -> dict[str, float]:
    """Loss and accuracy over the split (or its first `max_batches` batches per rank)."""
    module = engine.module
    was_training = module.training
    if not keep_train_mode:
        module.eval()
    results: dict[str, bool] = {}
    loss_sum, token_count = 0.0, 0
    try:
        for number, item in enumerate(loader):
            if max_batches and number >= max_batches:
                break
            if not item.batch.keys:
                continue
            inputs = move(item.batch.inputs, engine.device, dtype_of(module))
            summed, _ = TEACHER_FORCED(module, inputs, None)
            loss_sum += float(summed)
            token_count += TEACHER_FORCED.units(inputs, None)
            predictions = generate(module, item, tokenizer, engine.device, max_new_tokens, synced)
            for key, prediction, answer in zip(item.batch.keys, predictions, item.answers):
                results[key] = normalise(prediction) == normalise(answer)
    finally:
        module.train(was_training)
    return reduce_results(results, loss_sum, token_count)


def generate(module, item: EvalBatch, tokenizer, device, max_new_tokens: int, synced: bool) -> list[str]:
    prompts = move(item.prompts, device, dtype_of(module))
    with gathered_loose_parameters(module):
        output = module.generate(
            **prompts,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            synced_gpus=synced,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[:, prompts["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def gathered_loose_parameters(module):
    """Under ZeRO-3, the parameters that belong to a module with children (LLaVA-NeXT's `image_newline`) gathered
    whole: `generate` reaches them through `get_image_features`, outside any forward whose hooks would gather
    them, and would find them empty. Elsewhere nothing to do."""
    loose = [
        p
        for m in module.modules()
        if next(m.children(), None) is not None
        for p in m.parameters(recurse=False)
        if hasattr(p, "ds_id")
    ]
    if not loose:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(loose, modifier_rank=None)


def dtype_of(module) -> torch.dtype:
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


def reduce_results(results: dict[str, bool], loss_sum: float, token_count: int) -> dict[str, float]:
    gathered = [results]
    totals = torch.tensor([loss_sum, float(token_count)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
        dist.all_reduce(totals)
    merged: dict[str, bool] = {}
    for part in gathered:
        merged.update(part)
    accuracy = sum(merged.values()) / len(merged) if merged else float("nan")
    loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
    return {"eval/loss": loss, "eval/accuracy": accuracy, "eval/samples": float(len(merged))}
