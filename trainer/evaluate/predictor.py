"""Answers from a loaded model: greedy generation, or the likeliest of a closed set.

Closed sets: each candidate is written as the final answer and scored by the sum of the
log-probabilities of its tokens after the prompt, end-of-turn token included (so a candidate that is
a prefix of another is not favoured), not length-normalised unless asked (`per_token`). A model trained
with `train.objective=choice` learned only the answer's first token at the answer position: it is scored
there, by the log-probability of each candidate's first token (`first_token`). The prediction is the
argmax, so it is always one of the candidates.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, replace

import torch

from data_shards.sample import Sample, Turn
from trainer.batches.choice import choice_token_ids
from trainer.batches.collate import IGNORE_INDEX, Batch, build_collator, question
from trainer.batches.prompts import prompt_inputs
from trainer.chat.template import template_source
from trainer.evaluate.generation import EvalBatch, dtype_of, generate, move


def with_answer(sample: Sample, answer: str, number: int) -> Sample:
    asked = question(sample)
    return replace(asked, key=f"{sample.key}#{number}", turns=[*asked.turns, Turn("assistant", answer)])


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its final answer's tokens (the last labelled span) and their count."""
    targets = labels[:, 1:]
    mask = last_span(targets != IGNORE_INDEX)
    log_probs = logits[:, :-1][mask].float().log_softmax(dim=-1)
    picked = log_probs.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1).double()
    sums = torch.zeros(len(labels), dtype=torch.float64, device=logits.device)
    return sums.index_add(0, mask.nonzero()[:, 0], picked), mask.sum(dim=1)


def last_span(mask: torch.Tensor) -> torch.Tensor:
    """Keep only each row's last run of True (earlier assistant turns of a chat are not the answer)."""
    starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]
    run = starts.cumsum(dim=1)
    return mask & (run == run.max(dim=1, keepdim=True).values)


@dataclass
class Choice:
    answer: str
    scores: dict[str, float]


def pick(choices: list[str], scores: list[float]) -> Choice:
    best = max(range(len(choices)), key=scores.__getitem__)
    return Choice(choices[best], dict(zip(choices, scores)))


class Predictor:
    """Greedy answers (left-padded prompts, as training evaluation) and closed-set choices (right-padded)."""

    def __init__(self, model, processor, device: torch.device, rows_per_forward: int = 8):
        self.model = model
        self.device = device
        self.rows_per_forward = rows_per_forward
        self.tokenizer = processor.tokenizer
        self.scorer = build_collator(processor, model, sys.maxsize, template_source(model.name_or_path))
        self.prompter = copy.deepcopy(processor)
        self.prompter.tokenizer.padding_side = "left"
        self.first_token_ids: dict[tuple[str, ...], list[int]] = {}

    @torch.no_grad()
    def generate(self, samples: list[Sample], max_new_tokens: int) -> list[str]:
        prompts = prompt_inputs(self.scorer, self.prompter, samples)
        item = EvalBatch(Batch({}, [s.key for s in samples]), prompts, [])
        answers = generate(self.model, item, self.tokenizer, self.device, max_new_tokens, synced=False)
        return [answer.strip() for answer in answers]

    @torch.no_grad()
    def choose(
        self, samples: list[Sample], choice_lists: list[list[str]], per_token: bool = False, first_token: bool = False
    ) -> list[Choice]:
        if first_token:
            return self.choose_by_first_token(samples, choice_lists)
        candidates = [with_answer(s, c, n) for s, choices in zip(samples, choice_lists) for n, c in enumerate(choices)]
        scores: list[float] = []
        for start in range(0, len(candidates), self.rows_per_forward):
            scores += self.score(candidates[start : start + self.rows_per_forward], per_token)
        results, offset = [], 0
        for choices in choice_lists:
            results.append(pick(choices, scores[offset : offset + len(choices)]))
            offset += len(choices)
        return results

    def choose_by_first_token(self, samples: list[Sample], choice_lists: list[list[str]]) -> list[Choice]:
        results = []
        for start in range(0, len(samples), self.rows_per_forward):
            chunk = slice(start, start + self.rows_per_forward)
            inputs = move(prompt_inputs(self.scorer, self.prompter, samples[chunk]), self.device, dtype_of(self.model))
            log_probs = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
            for row, choices in zip(log_probs, choice_lists[chunk]):
                ids = self.first_tokens(tuple(choices))
                results.append(pick(choices, row[ids].tolist()))
        return results

    def first_tokens(self, choices: tuple[str, ...]) -> list[int]:
        if choices not in self.first_token_ids:
            self.first_token_ids[choices] = choice_token_ids(self.scorer, list(choices))
        return self.first_token_ids[choices]

    def score(self, candidates: list[Sample], per_token: bool) -> list[float]:
        inputs = move(self.scorer(candidates).inputs, self.device, dtype_of(self.model))
        labels = inputs.pop("labels")
        sums, counts = answer_logprobs(self.model(**inputs, use_cache=False).logits, labels)
        return (sums / counts if per_token else sums).tolist()
