"""The merged model: base + adapter merged in fp32 (into the dequantised 4-bit base for QLoRA), or a full
fine-tuning ZeRO checkpoint consolidated one tensor at a time; and the model as trained, for reference."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainer.config.schema import TrainConfig
from trainer.export.safetensors_reader import SafetensorsWeights
from trainer.export.source import ExportError, Source, default_dtype, say, with_dtype
from trainer.export.zero_reader import zero_tensors
from trainer.models.dtypes import DTYPES
from trainer.progress import progress

CONSOLIDATION_CHUNKS = 64  # pages of 1/64 of the checkpoint read at most before a reopen unmaps them


def load_base(config: TrainConfig) -> nn.Module:
    from trainer.models.loading import load_base_model

    return load_base_model(config, torch.device("cpu"))


def with_adapter(base: nn.Module, adapter: Path) -> nn.Module:
    """PeftModel over `base`; refuses an adapter file whose tensors do not match the adapter's layers."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    model = PeftModel.from_pretrained(base, str(adapter))
    weights = adapter / "adapter_model.safetensors"
    if weights.exists():
        with safe_open(str(weights), "pt") as stored:
            found = set(stored.keys())
        expected = set(get_peft_model_state_dict(model))
        if found != expected:
            raise ExportError(
                f"{weights}: missing {sorted(expected - found)[:3]}, unexpected "
                f"{sorted(found - expected)[:3]} ({len(expected ^ found)} tensors differ)"
            )
    return model


def dequantised(model: nn.Module) -> nn.Module:
    """Every bitsandbytes Linear4bit replaced by an nn.Linear holding its dequantised weight
    (`bitsandbytes.functional.dequantize_4bit`), everything in fp32, no quantisation config left."""
    import bitsandbytes as bnb

    model = model.dequantize(dtype=torch.float32).float()
    left = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    if left or getattr(model.config, "quantization_config", None) is not None:
        raise RuntimeError(f"dequantisation left 4-bit layers {left[:3]} or a quantization_config behind")
    return model


def empty_model(base: str) -> nn.Module:
    """The base model's architecture with no weights (meta tensors)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(base))


def filled(model: nn.Module, tensors, dtype: str, origin: str, base: str) -> nn.Module:
    """`model` (empty) given each (name, tensor) in `dtype` as it comes; every tensor of the base must arrive."""
    from accelerate.utils import set_module_tensor_to_device

    own = set(model.state_dict())
    for name, tensor in progress(tensors, len(own), f"read {Path(origin).name}", "tensor"):
        if name not in own:
            raise ExportError(f"{origin}: holds {name}, which the base model {base} does not have")
        set_module_tensor_to_device(model, name, "cpu", value=tensor, dtype=DTYPES[dtype])
    model.tie_weights()  # a tied head (Gemma, InternVL) is not stored: it is the input embedding
    empty = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if empty:
        raise ExportError(f"{origin}: lacks {len(empty)} tensors of the base model, e.g. {empty[:3]}")
    model.generation_config = base_generation_config(base, model.generation_config)
    return model


def consolidated(checkpoint: Path, base: str, dtype: str) -> nn.Module:
    """The base model's architecture holding the checkpoint's weights in `dtype`. The base weights are never
    loaded (the checkpoint holds every tensor, frozen ones included): the model starts empty and receives
    one gathered tensor at a time."""
    return filled(empty_model(base), zero_tensors(checkpoint, CONSOLIDATION_CHUNKS), dtype, str(checkpoint), base)


def lora_merged(config: TrainConfig, adapter: Path, dtype: str) -> nn.Module:
    """Base + adapter merged in fp32 arithmetic, held in `dtype`. The base is read into `dtype` one tensor at a
    time and each LoRA-targeted weight is read again in fp32 for its merge (peft's own, then rounded once),
    so memory holds the output-sized model plus one fp32 weight, whatever dtype the base was published in.
    Where its weights cannot be read that way (no local safetensors, or tensors that transformers merges or
    splits while loading), the whole base is loaded by transformers instead, in fp32
    unless it was published in `dtype` (`merge_dtype`)."""
    base = config.model.path
    weights, model = SafetensorsWeights.open(base), empty_model(base)
    stored = weights.model_names(model) if weights is not None else None
    if stored is None:
        say(f"{base}: weights not readable one by one under the model's names; loading the whole base")
        return with_adapter(load_base(with_dtype(config, merge_dtype(base, dtype))), adapter).merge_and_unload()
    model = filled(model, ((name, weights.read(stored[name])) for name in sorted(stored)), dtype, base, base)
    adapted = with_adapter(model, adapter)
    layers = lora_layers(adapted)
    for name, layer in progress(layers, len(layers), "merge LoRA", "layer"):
        base_layer = layer.get_base_layer()
        base_layer.weight.data = weights.read(stored[f"{name}.weight"]).float()
        layer.merge()
        base_layer.weight.data = base_layer.weight.data.to(DTYPES[dtype])
    return adapted.unload()


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name in the base model, layer) of every LoRA layer of a PeftModel."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in model.base_model.model.named_modules() if isinstance(module, LoraLayer)]


def base_generation_config(base: str, fallback):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(base)
    except OSError:
        return fallback


def merged_model(source: Source, config: TrainConfig, dtype: str) -> nn.Module:
    """The exported model: merged in fp32 (LoRA, QLoRA) or consolidated into the base in `dtype` (full)."""
    if source.kind == "full":
        return consolidated(source.checkpoint, config.model.path, dtype)
    if source.kind == "qlora":  # quantised as in training, then dequantised
        return with_adapter(dequantised(load_base(config)), source.adapter).merge_and_unload()
    return lora_merged(config, source.adapter, dtype)


def merge_dtype(base: str, dtype: str) -> str:
    """The dtype to hold a whole base in while merging. Its own when that is the output dtype: upcasting it is
    exact and peft adds the fp32 delta in fp32 arithmetic, rounding once to the output (W + ΔW, as a merge
    in fp32 then cast would), while memory holds the output-sized model, not an fp32 one. Else float32."""
    return dtype if default_dtype(base) == dtype else "float32"


def reference_model(source: Source, config: TrainConfig) -> nn.Module:
    """The model as trained, in eval mode: base + adapter in fp32; QLoRA: the 4-bit base as in training
    + adapter, its 4-bit layers left in train mode (an eval-mode forward would repack their weights for
    bitsandbytes' inference kernel, see NOTES-ENV); full: the consolidated fp32 weights."""
    if source.kind == "full":
        return consolidated(source.checkpoint, config.model.path, "float32").eval()
    if source.kind == "lora":
        return with_adapter(load_base(with_dtype(config, "float32")), source.adapter).eval()
    import bitsandbytes as bnb

    model = with_adapter(load_base(config), source.adapter).eval()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.train()
    return model
