"""Models of the published checkpoints' real sizes, from the tiny kit (its tokenizer and processor, real widths,
depths and vocabularies): what the GPU benchmark trains. Built on the meta device, no weight drawn."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from trainer.models.families.published import load
from trainer.testing import tiny
from trainer.testing.full_size import PARAMETERS, kit_overrides


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_kit_models_at_full_size_have_the_model_cards_parameter_count(name):
    overrides = kit_overrides(name)
    published, kit = load(tiny.KITS[overrides["family"]][0]), tiny.KITS[overrides["family"]][1]
    tokenizer = tiny.build_tokenizer(published, tiny.corpus(), kit.extra_specials(published))
    config = kit.build_config(published, tokenizer, overrides["text"], None)
    config.vision_config.update(overrides["vision"])
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(PARAMETERS[name], rel=0.005)
