"""Evaluation during training under the choice objective: choice accuracy, cross-entropy and, for image pairs
seen both ways, how often the prediction for the swapped pair is the mirror of the pair's."""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.evaluate.generation import dtype_of, move
from trainer.train.objectives import ChoiceLoss


@torch.no_grad()
def evaluate_choices(
    engine, loader, objective: ChoiceLoss, max_batches: int, keep_train_mode: bool
) -> dict[str, float]:
    """Every rank scores its slice; per-sample results are gathered and de-duplicated by key (the padding that
    equalises ranks is not counted twice). `keep_train_mode` for 4-bit models, as `generation.evaluate`."""
    module = engine.module
    was_training = module.training
    if not keep_train_mode:
        module.eval()
    results: dict[str, tuple[bool, float, bool | None]] = {}
    try:
        for number, batch in enumerate(loader):
            if max_batches and number >= max_batches:
                break
            if batch.keys:
                results.update(score_batch(module, engine.device, batch, objective))
    finally:
        module.train(was_training)
    return reduce_choice_results(results)


def score_batch(module, device, batch, objective: ChoiceLoss) -> dict[str, tuple[bool, float, bool | None]]:
    """key → (correct, cross-entropy, consistent under swapping or None when not swapped)."""
    logits = objective.choice_logits(module, move(batch.inputs, device, dtype_of(module)))
    targets = batch.targets.to(logits.device)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    predicted = logits.argmax(dim=1)
    rows = 2 if objective.swap_order is not None else 1
    results = {}
    for index, key in enumerate(batch.keys):
        row = index * rows
        consistent = None
        if rows == 2:
            consistent = bool(objective.swap_order.to(predicted.device)[predicted[row + 1]] == predicted[row])
        results[key] = (bool(predicted[row] == targets[row]), float(losses[row]), consistent)
    return results


def reduce_choice_results(results: dict[str, tuple[bool, float, bool | None]]) -> dict[str, float]:
    gathered = [results]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
    merged = {key: value for part in gathered for key, value in part.items()}
    if not merged:
        return {"eval/accuracy": float("nan"), "eval/loss": float("nan"), "eval/samples": 0.0}
    metrics = {
        "eval/accuracy": sum(correct for correct, _, _ in merged.values()) / len(merged),
        "eval/loss": sum(loss for _, loss, _ in merged.values()) / len(merged),
        "eval/samples": float(len(merged)),
    }
    swapped = [consistent for _, _, consistent in merged.values() if consistent is not None]
    if swapped:
        metrics["eval/swap_consistency"] = sum(swapped) / len(swapped)
    return metrics
