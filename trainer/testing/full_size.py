"""Real checkpoints' configs at their published sizes, with no weights: for the memory planner's checks and the GPU
benchmark's random-weight models. Built with the family's own config class from the published record's model
config (`trainer/models/families/published/`): keys the record adds for our own use (dotted names, `derived_*`,
unknowns kept as null) are left out, and everything unpublished takes the config class's defaults, as
`from_pretrained` would. Only records whose sizes are complete are offered: each with the parameter count its
model card states, which the tests check the built model against.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from trainer.models.families.published import load

# record → parameters, as the Hugging Face model card of the checkpoint states them
FAMILIES = {  # record → the tiny kit's family (trainer.testing.tiny.KITS)
    "llava-1.5-7b-hf": "llava",
    "llava-v1.6-mistral-7b-hf": "llava_next",
    "qwen2-vl-2b-instruct": "qwen2_vl",
    "qwen2.5-vl-7b-instruct": "qwen2_5_vl",
}
PARAMETERS = {
    "llava-1.5-7b-hf": 7.06e9,
    "llava-v1.6-mistral-7b-hf": 7.57e9,
    "qwen2-vl-2b-instruct": 2.21e9,
    "qwen2.5-vl-7b-instruct": 8.29e9,
}


def full_size_config(name: str) -> PretrainedConfig:
    if name not in PARAMETERS:
        raise ValueError(
            f"{name}: its published record does not give every size; full-size records: {list(PARAMETERS)}"
        )
    record = load(name)
    values = {
        key: value
        for key, value in record.model_config.items()
        if "." not in key and "derived" not in key and key != "model_type" and value is not None
    }
    return AutoConfig.for_model(record.model_type, **values)


def write_full_size_config(name: str, out: Path) -> Path:
    """`out/config.json` of the published checkpoint `name`; returns `out`."""
    full_size_config(name).save_pretrained(out)
    return Path(out)


TEXT_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "rope_parameters",
    "max_position_embeddings",
)
VISION_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "projection_dim",
    "depth",
    "embed_dim",
    "num_heads",
    "mlp_ratio",
    "out_hidden_size",
    "window_size",
    "fullatt_block_indexes",
)


def kit_overrides(name: str) -> dict:
    """`build_tiny_model(**kit_overrides(name), ...)` arguments for a model of `name`'s real sizes with the tiny
    kit's tokenizer and processor: the language and vision configs' sizes (the vocabulary too), token ids the kit's."""
    config = full_size_config(name)
    text = config.get_text_config().to_dict()
    sizes = {key: text[key] for key in TEXT_SIZES if text.get(key) is not None}
    sizes["head_dim"] = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    tied = getattr(config, "tie_word_embeddings", False) or text.get("tie_word_embeddings")
    sizes["tie_word_embeddings"] = bool(tied)
    vision = config.vision_config.to_dict()
    return {
        "family": FAMILIES[name],
        "text": sizes,
        "vision": {key: vision[key] for key in VISION_SIZES if vision.get(key) is not None},
    }
