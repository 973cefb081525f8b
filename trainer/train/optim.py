"""The optimizer: AdamW parameter groups per model part, the variant DeepSpeed needs, and the learning-rate
schedule (linear warmup, then cosine, linear or constant down to `min_lr_ratio`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from trainer.config import deepspeed_json
from trainer.config.schema import TrainConfig
from trainer.models.parts import ModelParts
from trainer.train.jit_ops import check_build_lock


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float) -> float:
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * shape


def build_scheduler(
    optimizer: Optimizer, total_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float
) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule, min_lr_ratio))


def parameter_groups(model: nn.Module, parts: ModelParts, config: TrainConfig) -> list[dict]:
    """AdamW groups: per-part learning rates; no weight decay on biases and norms (1-D tensors)."""
    opt = config.optimizer
    rates = {"projector": opt.projector_lr or opt.lr, "vision": opt.vision_lr or opt.lr}
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = parts.part_of(name)
        decay = parameter.ndim >= 2 and opt.weight_decay > 0
        group = groups.setdefault(
            (part, decay),
            {
                "params": [],
                "lr": rates.get(part, opt.lr),
                "weight_decay": opt.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            },
        )
        group["params"].append(parameter)
    return list(groups.values())


def make_optimizer(groups: list[dict], config: TrainConfig, resolved: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW for the `resolved` DeepSpeed config; DeepSpeed's CPU Adam when optimizer state lives on the CPU
    (ZeRO-Offload requires it); `FiniteAdamW` where DeepSpeed passes the gradients on unchecked for NaN/Inf
    (`trainer.train.agreement`)."""
    opt = config.optimizer
    kwargs = dict(lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay)
    if deepspeed_json.offloads_optimizer(resolved):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        from deepspeed.ops.op_builder import CPUAdamBuilder

        check_build_lock(CPUAdamBuilder.NAME)
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return (FiniteAdamW if deepspeed_json.passes_gradients_unchecked(resolved) else torch.optim.AdamW)(groups, **kwargs)


class FiniteAdamW(torch.optim.AdamW):
    """AdamW that skips a step whose gradients hold a NaN/Inf, as DeepSpeed's own optimizers do; it sets
    `overflow`, the flag DeepSpeed's engine reads to report the step as skipped."""

    overflow = False

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.overflow = bool(grads) and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if self.overflow:
            return None
        return super().step(closure)
