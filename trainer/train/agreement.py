"""Non-finite losses and stop signals: what every rank must agree on after each optimizer step.

A NaN/Inf loss on any rank makes that step's gradients non-finite after DeepSpeed reduces them, and
DeepSpeed then skips the update on every rank (`engine.was_step_applied()` is False everywhere): its
ZeRO-1/2/3 and bf16/fp16 optimizers check the all-reduced gradient norm. The one configuration where
DeepSpeed hands our optimizer the gradients unchecked (ZeRO stage 0 in fp32) gets `FiniteAdamW`,
which makes the same check; its gradients are already all-reduced, so every rank decides alike.

The ranks still have to agree on *why* a step was skipped (a non-finite loss counts towards
`train.max_bad_steps`; an fp16 loss-scale overflow does not) and on stop signals. `StepAgreement`
all-reduces both with one small collective started before the boundary micro-step's backward and read
after `engine.step()`: it runs while the ranks compute, instead of holding every micro-step up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from trainer.train.state import TrainerState

log = logging.getLogger("shardtune")


class NonFiniteLossError(RuntimeError):
    pass


class StepAgreement:
    """[a non-finite loss on some rank during this optimizer step, the largest stop signal number]."""

    def __init__(self, losses: list[torch.Tensor], signum: int):
        nonfinite = torch.logical_not(torch.isfinite(torch.stack(losses)).all())
        stop = torch.full((), signum, dtype=torch.int64, device=nonfinite.device)  # a fill, not a copy: no sync
        self.flags = torch.stack([nonfinite.to(torch.int64), stop])
        self.work = dist.all_reduce(self.flags, op=dist.ReduceOp.MAX, async_op=True) if dist.is_initialized() else None

    def result(self) -> tuple[bool, int]:
        if self.work is not None:
            self.work.wait()
        nonfinite, signum = self.flags.tolist()
        return bool(nonfinite), signum


def count_step(
    state: TrainerState, applied: bool, nonfinite: bool, max_bad_steps: int, last_good: Callable[[], str | None]
) -> bool:
    """Counts an optimizer step that DeepSpeed applied or skipped (every rank sees the same arguments); True
    if applied. A skip after a NaN/Inf loss counts towards `max_bad_steps` in a row, then the run aborts
    naming the `last_good` checkpoint; an fp16 loss-scale overflow is only counted."""
    if applied:
        if nonfinite:
            raise NonFiniteLossError(
                "DeepSpeed applied an optimizer step whose loss was NaN/Inf on some rank: "
                "check the DeepSpeed config's overflow checks"
            )
        state.bad_steps = 0
        return True
    state.skipped_steps += 1
    if not nonfinite:
        log.info("optimizer step %d skipped: fp16 gradient overflow (loss scale adapting)", state.step + 1)
        return False
    state.bad_steps += 1
    log.warning("optimizer step %d skipped: non-finite loss (%d in a row)", state.step + 1, state.bad_steps)
    if state.bad_steps >= max_bad_steps:
        raise NonFiniteLossError(
            f"{state.bad_steps} non-finite losses in a row (train.max_bad_steps={max_bad_steps}); "
            f"last good checkpoint: {last_good() or 'none'}"
        )
    return False
