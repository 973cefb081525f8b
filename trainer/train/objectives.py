"""What a micro-step minimises (`train.objective`): the language-model loss on the answers, or cross-entropy over
a closed answer set at the answer position, optionally with swap consistency between a pair and its mirror.

An objective returns the loss to backpropagate and its parts, which the metrics report as `train/<part>`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Parts = dict[str, torch.Tensor]


class LanguageModelLoss:
    parts: tuple[str, ...] = ()

    def __call__(
        self, model, inputs: dict[str, torch.Tensor], targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, Parts]:
        return model(**inputs, use_cache=False).loss, {}


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

    def __call__(self, model, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        logits = self.choice_logits(model, inputs)
        targets = targets.to(logits.device)
        cross_entropy = F.cross_entropy(logits, targets)
        parts = {"loss_ce": cross_entropy.detach(), "accuracy": (logits.argmax(dim=1) == targets).float().mean()}
        if self.swap_order is None:
            return cross_entropy, parts
        consistency = self.consistency(logits)
        parts["loss_consistency"] = consistency.detach()
        return cross_entropy + self.swap_weight * consistency, parts

    def consistency(self, logits: torch.Tensor) -> torch.Tensor:
        """Symmetric KL between each pair's distribution and its swapped twin's, read in the pair's order."""
        log_p = F.log_softmax(logits, dim=1)
        direct, mirrored = log_p[0::2], log_p[1::2][:, self.swap_order.to(logits.device)]
        forward = F.kl_div(mirrored, direct, log_target=True, reduction="batchmean")
        backward = F.kl_div(direct, mirrored, log_target=True, reduction="batchmean")
        return 0.5 * (forward + backward)
