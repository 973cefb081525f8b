"""What a config's model holds, read from its config alone: the model is built on the meta device (no weight
is read or allocated) and passed through the trainer's own freezing and LoRA code, so the planner counts the
parameters training will hold, for any architecture transformers can build."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText

from trainer.config.schema import TrainConfig
from trainer.models.dtypes import DTYPES
from trainer.models.loading import apply_lora
from trainer.models.parts import ModelParts, apply_freeze_policy, find_parts


@dataclass(frozen=True)
class ParameterCounts:
    """Elements by role. `quantizable`: frozen Linear weights of the language model, which 4-bit loading packs
    (vision tower, projector and head stay unquantised); `largest_trainable`: the biggest trainable tensor."""

    trainable: int
    frozen: int
    quantizable: int
    largest_trainable: int
    trainable_tensors: int


@dataclass(frozen=True)
class TextShape:
    hidden: int
    intermediate: int
    layers: int
    vocab: int


def meta_model(config: TrainConfig) -> tuple[nn.Module, ModelParts]:
    """The model as training prepares it (freezing, LoRA), on the meta device."""
    model_config = AutoConfig.from_pretrained(config.model.path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            model_config, dtype=DTYPES[config.model.dtype], attn_implementation="sdpa"
        )
    model.train()
    parts = find_parts(model)
    apply_freeze_policy(model, parts, config)
    if config.lora.enabled:
        model = apply_lora(model, parts, config)
    return model, parts


def count_parameters(model: nn.Module, parts: ModelParts) -> ParameterCounts:
    quantizable = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not module.weight.requires_grad
        and parts.part_of(name + ".x") == "language"
        and "lora_" not in name
    )
    trainable = [p.numel() for p in model.parameters() if p.requires_grad]
    return ParameterCounts(
        trainable=sum(trainable),
        frozen=sum(p.numel() for p in model.parameters() if not p.requires_grad),
        quantizable=quantizable,
        largest_trainable=max(trainable, default=0),
        trainable_tensors=len(trainable),
    )


def text_shape(model: nn.Module) -> TextShape:
    text = getattr(model.config, "text_config", model.config)
    intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    return TextShape(text.hidden_size, intermediate, text.num_hidden_layers, text.vocab_size)
