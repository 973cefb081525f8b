"""A model's vision tower, projector and language model, found from its structure (never from its name),
and which of them are frozen."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from trainer.config.schema import TrainConfig

VISION_NAMES = ("vision_tower", "visual", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "mm_projector", "connector")
LANGUAGE_NAMES = ("language_model", "text_model")


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
        raise ValueError(
            f"cannot find vision tower / projector / language model in {type(model).__name__} "
            f"(found {vision!r}, {projector!r}, {language!r})"
        )
    return ModelParts(vision, projector, language)


def shortest(names) -> str:
    ordered = sorted(names, key=lambda n: (n.count("."), n))
    return ordered[0] if ordered else ""


def apply_freeze_policy(model: nn.Module, parts: ModelParts, config: TrainConfig) -> None:
    frozen = {
        "vision": config.model.freeze_vision_tower,
        "projector": config.model.freeze_projector,
        "language": config.model.freeze_language_model or config.lora.enabled,
        "other": config.lora.enabled,
    }
    for name, parameter in model.named_parameters():
        if frozen[parts.part_of(name)]:
            parameter.requires_grad_(False)


def trained_in_full(parts: ModelParts, config: TrainConfig) -> list[str]:
    """Unfrozen parts besides the language model are trained in full next to the adapters."""
    names = [] if config.model.freeze_projector else [parts.projector]
    if not config.model.freeze_vision_tower:
        names.append(parts.vision)
    return [name.rsplit(".", 1)[-1] for name in names]
