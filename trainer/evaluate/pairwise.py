"""Pair samples (two images, `extra` with `items` and `score1`/`score2`): what an outcome keeps of them, and
the swap check, which asks the same question again with the two images in the other order.

A prediction on the swapped pair is consistent when it mirrors the original one (First ↔ Second, Similar ↔
Similar). The swapped pair is scored on the same closed answer set only (no greedy generation), so the check
costs one more `choose` per pair; pair samples without a closed set get no swapped prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from data_shards.sample import Sample
from trainer.evaluate.generation import normalise
from trainer.evaluate.predictor import Choice

MIRROR = {"First": "Second", "Second": "First", "Similar": "Similar"}


@dataclass
class PairRecord:
    """The compared items (image 1, image 2), their true scores, and the choice made with the images swapped."""

    items: list[str]
    scores: list[float]
    swapped_choice: str | None = None


def is_pair(sample: Sample) -> bool:
    extra = sample.extra
    return len(sample.images) == 2 and len(extra.get("items") or []) == 2 and "score1" in extra and "score2" in extra


def pair_record(sample: Sample, swapped: Choice | None) -> PairRecord | None:
    if not is_pair(sample):
        return None
    extra = sample.extra
    scores = [float(extra["score1"]), float(extra["score2"])]
    return PairRecord([str(item) for item in extra["items"]], scores, swapped.answer if swapped else None)


def swapped(sample: Sample) -> Sample:
    """The pair with its images in the other order, to be asked the same question over the same choices (so the
    rest is left as it is: `choose` replaces the answer, and the record keeps the original's items and scores)."""
    return replace(sample, key=f"{sample.key}/swapped", images=sample.images[::-1])


def swapped_choices(
    choose: Callable[[list[Sample], list[list[str]]], list[Choice]],
    samples: list[Sample],
    choice_lists: list[list[str] | None],
) -> dict[int, Choice]:
    """Index in `samples` → the choice on the swapped pair, for the closed-set pair samples; `choose` is the
    scoring the originals had (`Predictor.choose` with its options)."""
    chosen = [index for index, sample in enumerate(samples) if choice_lists[index] and is_pair(sample)]
    return dict(zip(chosen, choose([swapped(samples[i]) for i in chosen], [choice_lists[i] for i in chosen])))


def canonical(answer: str) -> str | None:
    """First, Second or Similar, whatever the case and end punctuation; None for any other answer."""
    return {normalise(name): name for name in MIRROR}.get(normalise(answer))


def consistent(prediction: str, swapped_choice: str) -> bool:
    original = canonical(prediction)
    return original is not None and canonical(swapped_choice) == MIRROR[original]
