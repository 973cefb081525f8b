"""A config's per-rank peak memory: model states (`trainer.plan.states`) and the runtime's own memory, plus the
largest of the activations at the data's token lengths (`trainer.plan.activations`, `trainer.plan.tokens`) and
the optimizer's and all-reduce's transients (freed activations make room for them), with and without gradient
checkpointing, and the largest micro batch that fits a device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config import deepspeed_json
from trainer.config.schema import TrainConfig
from trainer.models.dtypes import DTYPES
from trainer.plan import activations
from trainer.plan.model_shape import ParameterCounts, TextShape, count_parameters, meta_model, text_shape
from trainer.plan.states import Layout, layout_from, model_states, transients
from trainer.plan.tokens import TokenLengths, row_tokens

GIB = 1024**3
# What a rank holds besides the tensors the planner counts, by ZeRO stage. cpu: measured here with the 64-wide
# tiny LLaVA, whose model states are a few MB: the peak resident set of its 2-rank runs above the imports
# (torch's CPU kernels, gloo, DeepSpeed's stage machinery, the loader; bench/RESULTS.md, "Memory planner").
# cuda: the CUDA context and cuBLAS/NCCL workspaces, a typical figure, not yet checked on a GPU here.
RUNTIME_BYTES = {
    "cpu": {0: 0.215 * GIB, 1: 0.26 * GIB, 2: 0.26 * GIB, 3: 0.28 * GIB},
    "cuda": dict.fromkeys(range(4), 1.0 * GIB),
}
MAX_MICRO_BATCH = 1024


@dataclass
class Plan:
    counts: ParameterCounts
    text: TextShape
    layout: Layout
    tokens: TokenLengths
    row_tokens: int
    row_supervised: int
    micro_batch: int
    states: dict[str, dict[str, float]]
    transients: dict[str, float]
    activations_per_sample: dict[bool, float]
    runtime: float
    checkpointing: bool
    device_bytes: float | None = None

    def fixed(self) -> float:
        """What does not depend on the micro batch: model states and the runtime."""
        return sum(self.states["device"].values()) + self.runtime

    def per_rank(self, checkpointing: bool, micro_batch: int | None = None) -> float:
        """The peak: model states and runtime, plus the largest of the activations and the transients."""
        batch = self.micro_batch if micro_batch is None else micro_batch
        return self.fixed() + max(batch * self.activations_per_sample[checkpointing], *self.transients.values())

    def fits(self, checkpointing: bool) -> bool | None:
        return None if self.device_bytes is None else self.per_rank(checkpointing) <= self.device_bytes

    def largest_micro_batch(self, checkpointing: bool) -> int | None:
        if self.device_bytes is None:
            return None
        if self.per_rank(checkpointing, 1) > self.device_bytes:
            return 0
        room = self.device_bytes - self.fixed()
        return min(MAX_MICRO_BATCH, int(room // self.activations_per_sample[checkpointing]))


def language_model(model, parts):
    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model
    return unwrapped.get_submodule(parts.language)


def activation_bytes(
    model, parts, text: TextShape, tokens: int, supervised: int, dtype: torch.dtype
) -> dict[bool, float]:
    """Per sample (a row of `tokens`, `supervised` of them): activations scale with the micro batch."""
    language = language_model(model, parts)
    measured = activations.measure(
        model, language, 1, tokens, supervised, text.hidden, text.intermediate, text.vocab, dtype
    )
    return {checkpointing: float(measured.total(checkpointing)) for checkpointing in (False, True)}


def plan(
    config: TrainConfig,
    ranks: int,
    tokens: TokenLengths,
    device: str = "cuda",
    device_bytes: float | None = None,
    model_and_parts=None,
) -> Plan:
    model, parts = model_and_parts or meta_model(config)
    counts, text = count_parameters(model, parts), text_shape(model)
    dtype = DTYPES[config.model.dtype]
    resolved = deepspeed_json.resolve(config, ranks, text.hidden)
    element = torch.empty((), dtype=dtype).element_size()
    layout = layout_from(resolved, ranks, element, config.quant, touched_only=device == "cpu")
    row, supervised = row_tokens(tokens, config)
    return Plan(
        counts=counts,
        text=text,
        layout=layout,
        tokens=tokens,
        row_tokens=row,
        row_supervised=supervised,
        micro_batch=config.train.micro_batch_size,
        states=model_states(counts, layout),
        transients=transients(counts, layout),
        activations_per_sample=activation_bytes(model, parts, text, row, supervised, dtype),
        runtime=RUNTIME_BYTES[device][layout.stage],
        checkpointing=config.model.gradient_checkpointing,
        device_bytes=device_bytes,
    )
