"""Load an image-text-to-text model and make it trainable: attention, freezing, LoRA / QLoRA, parameter groups.

Parts are found from the model's structure (its vision, projector and language sub-modules), never
from the model's name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from trainer.config import TrainConfig
from trainer.mllama_fix import mask_image_free_rows

log = logging.getLogger("shardtune")
VISION_NAMES = ("vision_tower", "visual", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "mm_projector", "connector")
LANGUAGE_NAMES = ("language_model", "text_model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelParts:
    """Dotted names (in the unwrapped model) of the parts freeze policy and learning rates act on."""

    vision: str
    projector: str
    language: str

    def part_of(self, parameter_name: str) -> str:
        name = parameter_name.replace("base_model.model.", "", 1)
        for part in ("projector", "vision", "language"):
            prefix = getattr(self, part)
            if name.startswith(prefix + ".") or f".{prefix}." in f".{name}":
                return part
        return "other"


def find_parts(model: nn.Module) -> ModelParts:
    names = {name for name, _ in model.named_modules()}
    vision = shortest(n for n in names if n.rsplit(".", 1)[-1] in VISION_NAMES)
    projector = shortest(n for n in names if n.rsplit(".", 1)[-1] in PROJECTOR_NAMES)
    language = shortest(n for n in names if n.rsplit(".", 1)[-1] in LANGUAGE_NAMES)
    if not (vision and projector and language):
        raise ValueError(f"cannot find vision tower / projector / language model in {type(model).__name__} "
                         f"(found {vision!r}, {projector!r}, {language!r})")
    return ModelParts(vision, projector, language)


def shortest(names) -> str:
    ordered = sorted(names, key=lambda n: (n.count("."), n))
    return ordered[0] if ordered else ""


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
    kwargs = dict(dtype=dtype, quantization_config=four_bit_config(quant.quant_type, quant.double_quant, dtype)
                  if quant.load_in_4bit else None)
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


def apply_freeze_policy(model: nn.Module, parts: ModelParts, config: TrainConfig) -> None:
    frozen = {"vision": config.model.freeze_vision_tower, "projector": config.model.freeze_projector,
              "language": config.model.freeze_language_model or config.lora.enabled, "other": config.lora.enabled}
    for name, parameter in model.named_parameters():
        if frozen[parts.part_of(name)]:
            parameter.requires_grad_(False)


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


def trained_in_full(parts: ModelParts, config: TrainConfig) -> list[str]:
    """Unfrozen parts besides the language model are trained in full next to the adapters."""
    names = [] if config.model.freeze_projector else [parts.projector]
    if not config.model.freeze_vision_tower:
        names.append(parts.vision)
    return [name.rsplit(".", 1)[-1] for name in names]


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
    log.info("model %s: %d trainable of %d parameters", Path(config.model.path).name, trainable,
             sum(p.numel() for p in model.parameters()))
    return model, parts


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
        group = groups.setdefault((part, decay), {
            "params": [], "lr": rates.get(part, opt.lr), "weight_decay": opt.weight_decay if decay else 0.0,
            "name": f"{part}{'' if decay else '_no_decay'}"})
        group["params"].append(parameter)
    return list(groups.values())
