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
