"""Scoring evaluation outcomes: accuracy (exact, normalised, closed-set choice), per class, confusion, errors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from data_shards.sample import Sample
from trainer.batches.collate import last_assistant, question
from trainer.evaluate.generation import normalise
from trainer.evaluate.model_source import UsageError
from trainer.evaluate.pairwise import PairRecord
from trainer.evaluate.predictor import Choice

OTHER = "(other)"


@dataclass
class Outcome:
    key: str
    prompt: str
    reference: str
    label: str
    generated: str
    choices: list[str] | None = None
    choice: str | None = None
    choice_scores: dict[str, float] | None = None
    pair: PairRecord | None = None

    @property
    def prediction(self) -> str:
        return self.generated if self.choice is None else self.choice

    @property
    def correct(self) -> bool:
        return normalise(self.prediction) == normalise(self.reference)


def outcome(
    sample: Sample, generated: str, choices: list[str] | None, chosen: Choice | None, pair: PairRecord | None = None
) -> Outcome:
    reference = sample.turns[last_assistant(sample)].text
    return Outcome(
        sample.key,
        question(sample).turns[-1].text,
        reference,
        sample.label or reference,
        generated,
        choices,
        chosen.answer if chosen else None,
        chosen.scores if chosen else None,
        pair,
    )


def mean(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags)


def summarise(outcomes: list[Outcome]) -> dict:
    if not outcomes:
        raise UsageError("no samples were evaluated (every sample unreadable?)")
    report = {
        "accuracy": mean(o.correct for o in outcomes),
        "exact_match": mean(o.generated.strip() == o.reference.strip() for o in outcomes),
        "normalised_match": mean(normalise(o.generated) == normalise(o.reference) for o in outcomes),
        "num_samples": len(outcomes),
        "per_class": per_class_accuracy(outcomes),
    }
    chosen = [o for o in outcomes if o.choice is not None]
    if chosen:
        report["choice_accuracy"] = mean(normalise(o.choice) == normalise(o.reference) for o in chosen)
        report["num_choice_samples"] = len(chosen)
        report["generation_in_choices"] = mean(
            normalise(o.generated) in {normalise(c) for c in o.choices} for o in chosen
        )
    return report


def per_class_accuracy(outcomes: list[Outcome]) -> dict[str, dict]:
    tally: dict[str, list[int]] = {}
    for o in outcomes:
        counts = tally.setdefault(o.label, [0, 0])
        counts[0] += o.correct
        counts[1] += 1
    return {
        label: {"accuracy": right / total, "correct": right, "total": total}
        for label, (right, total) in sorted(tally.items())
    }


@dataclass
class Confusion:
    """Counts of (true class, predicted class); predictions that name no class fall in OTHER."""

    classes: list[str]
    columns: list[str]
    counts: list[list[int]]


def class_names(outcomes: list[Outcome]) -> dict[str, str]:
    """Normalised answer → class: the choices first (in their order), then labels and references (sorted)."""
    names: dict[str, str] = {}
    for o in outcomes:
        for choice in o.choices or []:
            names.setdefault(normalise(choice), choice)
    for o in sorted(outcomes, key=lambda o: o.label):
        names.setdefault(normalise(o.label), o.label)
        names.setdefault(normalise(o.reference), names[normalise(o.label)])
    return names


def confusion_matrix(outcomes: list[Outcome]) -> Confusion:
    names = class_names(outcomes)
    classes = list(dict.fromkeys(names.values()))
    pairs = []
    for o in outcomes:
        truth = names[normalise(o.label)]
        pairs.append((truth, truth if o.correct else names.get(normalise(o.prediction), OTHER)))
    columns = classes + ([OTHER] if any(predicted == OTHER for _, predicted in pairs) else [])
    counts = [[0] * len(columns) for _ in classes]
    for truth, predicted in pairs:
        counts[classes.index(truth)][columns.index(predicted)] += 1
    return Confusion(classes, columns, counts)


def error_examples(outcomes: list[Outcome], limit: int) -> list[dict[str, str]]:
    wrong = [o for o in outcomes if not o.correct]
    return [
        {
            "key": o.key,
            "prompt": o.prompt,
            "reference": o.reference,
            "prediction": o.prediction,
            "generated": o.generated,
        }
        for o in wrong[:limit]
    ]
