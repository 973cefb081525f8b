"""Load an image-text-to-text model and make it trainable: attention, 4-bit quantisation, freezing, LoRA."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from trainer.config.schema import TrainConfig
from trainer.models.dtypes import DTYPES
from trainer.models.mllama_fix import mask_image_free_rows
from trainer.models.parts import (
    PROJECTOR_NAMES,
    VISION_NAMES,
    ModelParts,
    apply_freeze_policy,
    find_parts,
    trained_in_full,
)

log = logging.getLogger("shardtune")


def choose_attention(requested: str) -> str:
    if requested != "auto":
        return requested
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


def four_bit_config(quant_type: str, double_quant: bool, dtype: torch.dtype):
    """bitsandbytes 4-bit for the language model; vision tower, projector and head stay unquantised.
    Storage in the compute dtype, so ZeRO-3 can partition the packed weights like any other tensor."""
    from transformers import BitsAndBytesConfig

    # transformers matches these from the start of a module's full name, as regular expressions
    skip = [rf"(?:.*\.)?{name}" for name in (*VISION_NAMES, *PROJECTOR_NAMES)] + ["lm_head"]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
        llm_int8_skip_modules=skip,
    )


def load_base_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """from_pretrained with dtype and attention; sdpa falls back to eager for models without it."""
    attention = choose_attention(config.model.attention)
    dtype = DTYPES[config.model.dtype]
    quant = config.quant
    kwargs = dict(
        dtype=dtype,
        quantization_config=four_bit_config(quant.quant_type, quant.double_quant, dtype)
        if quant.load_in_4bit
        else None,
    )
    if config.quant.load_in_4bit:
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForImageTextToText.from_pretrained(config.model.path, attn_implementation=attention, **kwargs)
    except ValueError as error:
        if attention != "sdpa" or "sdpa" not in str(error).lower():
            raise
        log.warning("%s: no SDPA support, using eager attention", config.model.path)
        model = AutoModelForImageTextToText.from_pretrained(config.model.path, attn_implementation="eager", **kwargs)
    model.train()  # from_pretrained returns eval mode; bitsandbytes repacks 4-bit weights on eval forwards
    return mask_image_free_rows(model)


def lora_targets(model: nn.Module, parts: ModelParts, requested: list[str]) -> list[str]:
    """Full names of the language model's Linear layers (or those whose last name is requested)."""
    targets = []
    for name, module in model.named_modules():
        if parts.part_of(name + ".x") != "language" or not isinstance(module, nn.Linear):
            continue
        if not requested or name.rsplit(".", 1)[-1] in requested:
            targets.append(name)
    if not targets:
        raise ValueError(f"lora.target_modules={requested or 'auto'} matched no Linear layer of {parts.language}")
    return targets


def apply_lora(model: nn.Module, parts: ModelParts, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=lora_targets(model, parts, config.lora.target_modules),
        modules_to_save=trained_in_full(parts, config),
    )
    return get_peft_model(model, lora)


def prepare_model(config: TrainConfig, device: torch.device) -> tuple[nn.Module, ModelParts]:
    model = load_base_model(config, device)
    parts = find_parts(model)
    apply_freeze_policy(model, parts, config)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora.enabled:
        model = apply_lora(model, parts, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError("nothing to train: every part is frozen (check model.freeze_* and lora.enabled)")
    log.info(
        "model %s: %d trainable of %d parameters",
        Path(config.model.path).name,
        trainable,
        sum(p.numel() for p in model.parameters()),
    )
    return model, parts
