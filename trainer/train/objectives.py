"""What a micro-step minimises (`train.objective`): the language-model loss on the answers, or cross-entropy over
a closed answer set at the answer position, optionally with swap consistency between a pair and its mirror.

An objective returns the micro-batch's loss summed over its units (supervised tokens, or rows) and its parts
(means, which the metrics report as `train/<part>`); `units(batch)` counts them before the forward, so that the
trainer can weight each micro-step by the units of the whole optimizer step on every rank
(`trainer.train.trainer`): gradient accumulation then equals one larger batch whatever each micro-batch holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.chat.tokens import IGNORE_INDEX

Parts = dict[str, torch.Tensor]


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions whose next token is supervised, as a (batch, tokens) mask; those next tokens, row by row)."""
    following = labels[:, 1:]
    supervised = following != IGNORE_INDEX
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = supervised
    return keep, following[supervised]


class LanguageModelLoss:
    """Next-token cross-entropy summed over the supervised tokens, with the head applied at those positions only
    (transformers' boolean `logits_to_keep`): most positions of a VLM sample are image and prompt tokens, and
    their (tokens × vocabulary) logits would be the largest activation of the step. The same loss and gradients
    as the model's own mean loss times the token count (tests/unit/test_objectives.py)."""

    parts: tuple[str, ...] = ()

    def units(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor | None) -> int:
        return int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())

    def __call__(
        self, model, inputs: dict[str, torch.Tensor], targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, Parts]:
        forward = {key: value for key, value in inputs.items() if key != "labels"}
        keep, next_tokens = next_token_targets(inputs["labels"])
        logits = model(**forward, use_cache=False, logits_to_keep=keep).logits
        return F.cross_entropy(logits.float(), next_tokens.to(logits.device), reduction="sum"), {}


class ChoiceLoss:
    """Cross-entropy over the choices' first-token logits at the last (left-padded) position.

    With `swap_order` (the index each choice takes when the images are swapped), rows come in pairs (a sample,
    then its swapped twin) and `swap_weight` × the symmetric KL between p(·|a,b) and the mirrored p(·|b,a) is added.
    """

    def __init__(self, choice_ids: list[int], swap_order: list[int] | None = None, swap_weight: float = 0.0):
        self.choice_ids = torch.tensor(choice_ids)
        self.swap_order = torch.tensor(swap_order) if swap_order else None
        self.swap_weight = swap_weight
        self.parts = ("loss_ce", "accuracy") + (("loss_consistency",) if swap_order else ())

    def choice_logits(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
        return logits[:, self.choice_ids.to(logits.device)].float()

    def units(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> int:
        return targets.numel()

    def __call__(self, model, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """The rows' mean loss (cross-entropy, plus the consistency of each pair) times the rows."""
        logits = self.choice_logits(model, inputs)
        targets = targets.to(logits.device)
        cross_entropy = F.cross_entropy(logits, targets)
        parts = {"loss_ce": cross_entropy.detach(), "accuracy": (logits.argmax(dim=1) == targets).float().mean()}
        rows = targets.numel()
        if self.swap_order is None:
            return cross_entropy * rows, parts
        consistency = self.consistency(logits)
        parts["loss_consistency"] = consistency.detach()
        return (cross_entropy + self.swap_weight * consistency) * rows, parts

    def consistency(self, logits: torch.Tensor) -> torch.Tensor:
        """Symmetric KL between each pair's distribution and its swapped twin's, read in the pair's order."""
        log_p = F.log_softmax(logits, dim=1)
        direct, mirrored = log_p[0::2], log_p[1::2][:, self.swap_order.to(logits.device)]
        forward = F.kl_div(mirrored, direct, log_target=True, reduction="batchmean")
        backward = F.kl_div(direct, mirrored, log_target=True, reduction="batchmean")
        return 0.5 * (forward + backward)
