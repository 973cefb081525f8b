"""Hooks into the training loop, for what is not training itself (fault injection in tests, profilers).

`train.callbacks` names classes as `module:Class`; each is built without arguments. The loop calls every
callback at four points; the defaults do nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from trainer.config.fields import ConfigError

if TYPE_CHECKING:
    import torch


class Callback:
    def on_micro_loss(self, trainer, loss: torch.Tensor) -> torch.Tensor:
        """A micro-step's loss before backward; what is returned is what gets backpropagated."""
        return loss

    def on_step_boundary(self, trainer) -> None:
        """The micro-step that ends an optimizer step, before the ranks' step agreement starts."""

    def on_gradients(self, trainer) -> None:
        """After the backward of that micro-step, before DeepSpeed's step: the step's gradients are complete
        (read them with `deepspeed.utils.safe_get_full_grad`, which gathers ZeRO partitions)."""

    def on_step_end(self, trainer) -> None:
        """After an applied optimizer step, its evaluation, checkpoint and stop handling."""


def load_callbacks(specs: list[str]) -> list[Callback]:
    callbacks = []
    for spec in specs:
        module_name, _, class_name = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ConfigError([f"train.callbacks: cannot import {spec!r} ({error})"]) from None
        callbacks.append(factory())
    return callbacks
