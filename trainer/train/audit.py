"""The gradient audit (`train.audit_every=N`), for any recipe: is every part of the model learning, and only those?

Every N optimizer steps rank 0 writes `{run}/audit/grad_table_step_N.csv`, one row per trainable parameter
(optimizer group, layer, full shape, gradient norm, mean |grad|, zero-gradient fraction, weight norm, update
norm and update/weight ratio of that step), and `gradient_flow_step_N.png`. The same step checks that every
trainable parameter moved and no frozen one did. Every step warns on a global gradient norm out of bounds, a
loss spike and an fp16 overflow. Warnings and counts (`health/*`) go to the tracker on audited steps and on
steps that warned.

ZeRO partitions gradients and weights: the full tensors come from DeepSpeed's safe accessors, which are
collectives (an all-gather under ZeRO-3, an all-reduce under ZeRO-1/2), so every rank reads the same parameters
in the same order and only rank 0 keeps what it read (one full parameter at a time on the device; the weights
before the step as an fp32 copy in rank 0's host memory, small for LoRA, a model's worth in full fine-tuning).
Frozen parameters are never gathered: each rank fingerprints the part it holds before and after the step, and
the ranks agree on which changed. The loss-spike check reads rank 0's step loss (no extra collective). With
the audit off (N = 0) no callback is built.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from trainer.config.fields import ConfigError
from trainer.config.schema import TrainSection
from trainer.train.audit_plot import plot_gradient_flow
from trainer.train.callbacks import Callback
from trainer.train.optim import parameter_groups

log = logging.getLogger("shardtune")
LAYER = re.compile(r"\.(?:layers|layer|h|blocks|block)\.(\d+)\.")
COLUMNS = (
    "name",
    "part",
    "group",
    "layer",
    "shape",
    "numel",
    "grad_norm",
    "mean_abs_grad",
    "zero_grad_fraction",
    "weight_norm",
    "update_norm",
    "update_ratio",
)
EVENTS = ("grad_norm_high", "grad_norm_low", "loss_spikes", "fp16_overflows")  # counted since the run started
SHOWN = 5  # parameter names quoted in a warning
CHUNK = 2**24  # elements fingerprinted at a time


def layer_index(name: str) -> int | None:
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def full_shape(parameter: torch.nn.Parameter) -> tuple[int, ...]:
    """ZeRO-3 leaves a partitioned parameter an empty tensor and keeps its shape aside."""
    return tuple(getattr(parameter, "ds_shape", parameter.shape))


@dataclass(frozen=True)
class Tracked:
    """A trainable parameter and what its table row says about it besides numbers."""

    name: str
    part: str
    group: str
    shape: tuple[int, ...]
    parameter: torch.nn.Parameter = field(repr=False, compare=False)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "part": self.part,
            "group": self.group,
            "layer": layer_index(self.name),
            "shape": "x".join(map(str, self.shape)),
            "numel": math.prod(self.shape),
        }


def tracked_parameters(model, parts, config) -> tuple[list[Tracked], dict[str, torch.nn.Parameter]]:
    """Trainable parameters with their optimizer group, and the frozen ones. The groups are `parameter_groups`'
    own, computed on stand-ins with the full shapes (it reads `ndim`, which ZeRO-3 has emptied)."""
    named = list(model.named_parameters())
    stand_ins = {name: SimpleNamespace(requires_grad=p.requires_grad, ndim=len(full_shape(p))) for name, p in named}
    groups = parameter_groups(SimpleNamespace(named_parameters=stand_ins.items), parts, config)
    group_of = {id(stand_in): group["name"] for group in groups for stand_in in group["params"]}
    trainable = [
        Tracked(name, parts.part_of(name), group_of[id(stand_ins[name])], full_shape(p), p)
        for name, p in named
        if p.requires_grad
    ]
    return trainable, {name: p for name, p in named if not p.requires_grad}


def grad_stats(grad: torch.Tensor | None) -> dict[str, float]:
    """A full gradient's columns (NaN where DeepSpeed holds none for the parameter)."""
    if grad is None:
        return {"grad_norm": math.nan, "mean_abs_grad": math.nan, "zero_grad_fraction": math.nan}
    grad = grad.detach().float()  # no float64 copy of a whole embedding on the device
    return {
        "grad_norm": float(grad.norm()),
        "mean_abs_grad": float(grad.abs().mean()),
        "zero_grad_fraction": 1 - int(torch.count_nonzero(grad)) / max(1, grad.numel()),
    }


def update_stats(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """The step's update of a full (fp32 master) weight, against the weight after it."""
    after = after.detach().to("cpu", torch.float64)
    weight = float(after.norm())
    update = float((after - before.to(torch.float64)).norm())
    return {"weight_norm": weight, "update_norm": update, "update_ratio": update / weight if weight > 0 else math.nan}


def full_grad(parameter: torch.nn.Parameter, loss_scale: float) -> torch.Tensor | None:
    """The whole reduced gradient, unscaled; a collective under ZeRO-1/2/3 (call it on every rank)."""
    from deepspeed.utils import safe_get_full_grad

    grad = safe_get_full_grad(parameter)
    return None if grad is None else grad.detach().float() / loss_scale


def full_weight(parameter: torch.nn.Parameter) -> torch.Tensor:
    """The whole fp32 master weight (the module's own tensor where DeepSpeed keeps none); a collective under ZeRO."""
    from deepspeed.utils import safe_get_full_fp32_param

    weight = safe_get_full_fp32_param(parameter)
    return (parameter if weight is None else weight).detach()


def loss_scale(engine) -> float:
    """fp16's current loss scale (the gradients read before the step carry it); 1 otherwise."""
    return float(getattr(engine.optimizer, "loss_scale", None) or 1.0)


def fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """[sum, sum of squares] in float64, a chunk at a time (a float64 copy of a whole embedding may not fit)."""
    total = torch.zeros(2, dtype=torch.float64, device=tensor.device)
    for chunk in tensor.detach().flatten().split(CHUNK):
        chunk = chunk.double()
        total += torch.stack([chunk.sum(), chunk.square().sum()])
    return total


def fingerprints(parameters: list[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    """One fingerprint per parameter of the part this rank holds (ZeRO-3's partition, else the whole tensor):
    a change of any element shows."""
    rows = [torch.zeros(2, dtype=torch.float64, device=device)]  # never an empty stack
    for parameter in parameters:
        rows.append(fingerprint(parameter.ds_tensor if hasattr(parameter, "ds_tensor") else parameter.data).to(device))
    return torch.stack(rows)[1:]


def changed_anywhere(before: torch.Tensor, after: torch.Tensor) -> list[bool]:
    """Which fingerprints changed on some rank (one all-reduce)."""
    changed = (before != after).any(dim=1).to(torch.int32)
    if dist.is_initialized():
        dist.all_reduce(changed, op=dist.ReduceOp.MAX)
    return [bool(flag) for flag in changed.tolist()]


def norm_problem(norm: float, above: float, below: float) -> str | None:
    """'high' above `above` (or not finite), 'low' below `below`, else None."""
    if not math.isfinite(norm) or norm > above:
        return "high"
    return "low" if norm < below else None


def overflowed(seen: tuple[int, int] | None, now: tuple[int, int]) -> bool:
    """Between two step boundaries exactly one optimizer step was counted ((skipped_steps, bad_steps) before and
    after it): skipped without a new non-finite loss, it was an fp16 loss-scale overflow."""
    return seen is not None and now[0] > seen[0] and now[1] <= seen[1]


class LossSpikes:
    """A step loss above `factor` × the median of the last `window` step losses, once `warmup` are known."""

    def __init__(self, factor: float, window: int = 50, warmup: int = 5):
        self.factor, self.warmup = factor, warmup
        self.losses: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> bool:
        spike = (
            self.factor > 0 and len(self.losses) >= self.warmup and loss > self.factor * statistics.median(self.losses)
        )
        self.losses.append(loss)
        return spike


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def quoted(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


@dataclass
class PendingAudit:
    """What an audited step's boundary read, for its end to compare: gradient columns and weights (rank 0)."""

    step: int
    grads: list[dict[str, float]]
    before: list[torch.Tensor]
    frozen: torch.Tensor


class GradientAudit(Callback):
    def __init__(self, every: int, warn_above: float, warn_below: float, spike_factor: float):
        self.every, self.above, self.below = every, warn_above, warn_below
        self.spikes = LossSpikes(spike_factor)
        self.counts = Counter({f"health/{event}": 0 for event in EVENTS})
        self.fired = False  # something warned since the last metrics line of ours
        self.seen: tuple[int, int] | None = None
        self.step_loss: torch.Tensor | None = None
        self.pending: PendingAudit | None = None
        self.parameters: tuple[list[Tracked], dict[str, torch.nn.Parameter]] | None = None

    def warn(self, trainer, event: str, message: str, *args) -> None:
        self.counts[f"health/{event}"] += 1
        self.fired = True
        if trainer.world.is_main:
            log.warning(message, *args)

    def on_step_boundary(self, trainer) -> None:
        state = trainer.state
        seen, self.seen = self.seen, (state.skipped_steps, state.bad_steps)
        if overflowed(seen, self.seen):
            self.warn(
                trainer, "fp16_overflows", "audit: optimizer step %d skipped for an fp16 overflow", state.step + 1
            )

    def on_gradients(self, trainer) -> None:
        self.step_loss = torch.stack(trainer.pending["losses"]).mean()  # read after the step, once it has synced
        step = trainer.state.step + 1
        if step % self.every == 0:  # a skipped step is read again at the next boundary
            with trainer.paused():  # left out of the step time, as evaluation is
                self.pending = self.read_before(trainer, step)

    def on_step_end(self, trainer) -> None:
        self.check_step(trainer)
        metrics = {}
        if self.pending is not None and self.pending.step == trainer.state.step:
            with trainer.paused():
                metrics = self.read_after(trainer)
        if (metrics or self.fired) and trainer.world.is_main:
            trainer.tracker.log({**self.counts, **metrics}, trainer.state.step)
        self.fired = False

    def check_step(self, trainer) -> None:
        step, norm = trainer.state.step, trainer.engine.get_global_grad_norm()
        norm = math.nan if norm is None else float(norm)  # None: this engine computes no norm
        problem = None if math.isnan(norm) else norm_problem(norm, self.above, self.below)
        if problem:
            limit = self.above if problem == "high" else self.below
            self.warn(
                trainer, f"grad_norm_{problem}", "audit: step %d gradient norm %.3g (limit %g)", step, norm, limit
            )
        loss = math.nan if self.step_loss is None else float(self.step_loss)
        if math.isfinite(loss) and self.spikes.check(loss):
            factor = self.spikes.factor
            self.warn(
                trainer, "loss_spikes", "audit: step %d loss %.4g, over %g× the recent median", step, loss, factor
            )

    def tracked(self, trainer) -> tuple[list[Tracked], dict[str, torch.nn.Parameter]]:
        if self.parameters is None:
            self.parameters = tracked_parameters(trainer.engine.module, trainer.parts, trainer.config)
        return self.parameters

    def read_before(self, trainer, step: int) -> PendingAudit:
        trainable, frozen = self.tracked(trainer)
        main, scale = trainer.world.is_main, loss_scale(trainer.engine)
        grads, before = [], []
        for item in trainable:  # every rank, in the same order: each read is a collective
            grad, weight = full_grad(item.parameter, scale), full_weight(item.parameter)
            if main:
                grads.append(grad_stats(grad))
                before.append(weight.to("cpu", torch.float32, copy=True))
        return PendingAudit(step, grads, before, fingerprints(list(frozen.values()), trainer.engine.device))

    def read_after(self, trainer) -> dict[str, float]:
        pending, self.pending = self.pending, None
        trainable, frozen = self.tracked(trainer)
        main, rows = trainer.world.is_main, []
        for index, item in enumerate(trainable):  # every rank, as in read_before
            after = full_weight(item.parameter)
            if main:
                rows.append({**item.identity(), **pending.grads[index], **update_stats(pending.before[index], after)})
        flags = changed_anywhere(pending.frozen, fingerprints(list(frozen.values()), trainer.engine.device))
        moved = [name for name, flag in zip(frozen, flags) if flag]
        return self.report(trainer, rows, moved) if main else {}

    def report(self, trainer, rows: list[dict[str, Any]], moved: list[str]) -> dict[str, float]:
        step, folder = trainer.state.step, trainer.run_folder.audit
        folder.mkdir(parents=True, exist_ok=True)
        write_table(folder / f"grad_table_step_{step}.csv", rows)
        plot_gradient_flow(rows, folder / f"gradient_flow_step_{step}.png", step)
        stuck = [row["name"] for row in rows if row["update_norm"] == 0]
        if moved:
            log.warning("audit: step %d moved %d frozen parameters: %s", step, len(moved), quoted(moved))
        if stuck:
            log.warning("audit: step %d left %d trainable parameters unchanged: %s", step, len(stuck), quoted(stuck))
        ratios = [row["update_ratio"] for row in rows if math.isfinite(row["update_ratio"])]
        norms = [row["grad_norm"] for row in rows if math.isfinite(row["grad_norm"])]
        return {
            "audit/grad_norm": math.sqrt(sum(norm * norm for norm in norms)),
            **({"audit/update_ratio_max": max(ratios)} if ratios else {}),
            "audit/params": len(rows),
            "health/frozen_moved": len(moved),
            "health/stuck_params": len(stuck),
        }


def audit_callbacks(section: TrainSection) -> list[Callback]:
    """The audit `train.audit_every` asks for: none at 0, so a run without it does no audit work at all."""
    problems = []
    if section.audit_every < 0:
        problems.append(f"train.audit_every: must be >= 0, got {section.audit_every}")
    if not 0 <= section.grad_warn_below < section.grad_warn_above:
        problems.append(
            f"train.grad_warn_below / grad_warn_above: need 0 <= below < above, got "
            f"{section.grad_warn_below} and {section.grad_warn_above}"
        )
    if section.loss_spike_factor < 0:
        problems.append(f"train.loss_spike_factor: must be >= 0 (0: off), got {section.loss_spike_factor}")
    if problems:
        raise ConfigError(problems)
    if not section.audit_every:
        return []
    return [
        GradientAudit(section.audit_every, section.grad_warn_above, section.grad_warn_below, section.loss_spike_factor)
    ]
