"""A training callback that records what a run really trains with, for tests/e2e/test_recipes.py:
`train.callbacks=[recipe_probe:RecipeProbe]` writes `recipe_probe.json` to the run folder after the first step."""

from __future__ import annotations

import json

from trainer.train.callbacks import Callback

FILE_NAME = "recipe_probe.json"
CALLBACK = "recipe_probe:RecipeProbe"


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def four_bit_layers(model) -> int:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    return sum(isinstance(module, Linear4bit) for module in model.modules())


def group_learning_rates(trainer) -> dict[str, float]:
    """Each optimizer group's peak learning rate (before the schedule's factor), by group name."""
    groups = trainer.engine.optimizer.param_groups
    return {group["name"]: group["initial_lr"] for group in groups}


def trainable_parameters_by_kind(trainer) -> dict[str, int]:
    """Trainable tensors: LoRA adapters, and the others by model part (vision, projector, language, other)."""
    counts: dict[str, int] = {}
    for name, parameter in trainer.model.named_parameters():
        if parameter.requires_grad:
            kind = "lora" if ".lora_" in name else trainer.parts.part_of(name)
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def objective(trainer) -> dict:
    loss = trainer.objective
    return {"name": type(loss).__name__, "swap_weight": getattr(loss, "swap_weight", None)}


def facts(trainer) -> dict:
    model = trainer.model
    return {
        "model_type": model.config.model_type,
        "zero_stage": trainer.zero_stage,
        "lora": is_peft(model),
        "four_bit_layers": four_bit_layers(model),
        "group_lrs": group_learning_rates(trainer),
        "trainable": trainable_parameters_by_kind(trainer),
        "objective": objective(trainer),
        "train_format": trainer.train_loader.stream.index["source"]["format"],
    }


class RecipeProbe(Callback):
    def on_step_end(self, trainer) -> None:
        if trainer.state.step == 1 and trainer.world.is_main:
            path = trainer.run_folder.root / FILE_NAME
            path.write_text(json.dumps(facts(trainer), indent=1))
