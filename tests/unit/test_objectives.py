"""The language-model objective: the head runs at supervised positions only, and its summed loss and gradients
equal the model's own (full-logits, mean) loss times the token count, for each tiny family, padded and packed."""

import pytest
import torch
from test_collate import collator_for, varied_samples
from transformers import AutoModelForImageTextToText

from trainer.models.processor import load_processor
from trainer.testing.tiny import FAMILIES, SMALL_IMAGE, build_tiny_model
from trainer.train.objectives import LanguageModelLoss


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("objective-models")
    return {family: build_tiny_model(family, root / family, image_size=SMALL_IMAGE) for family in FAMILIES}


@pytest.fixture(autouse=True)
def one_thread():
    """Both backward passes reduce in the same order: with several threads, a busy machine splits the work
    differently from one pass to the next and the sums differ in the last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gradients(model) -> dict[str, torch.Tensor]:
    found = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_equal_the_models_own_loss(models, family, packing):
    model = AutoModelForImageTextToText.from_pretrained(models[family], attn_implementation="eager").train()
    torch.manual_seed(0)
    collator = collator_for(model, load_processor(models[family]), packing=packing)
    batch = collator(varied_samples())
    objective = LanguageModelLoss()
    units = objective.units(batch.inputs, None)
    head_rows = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: head_rows.append(args[0].shape[:-1]))
    summed, _ = objective(model, batch.inputs, None)
    hook.remove()
    summed.backward()
    ours = gradients(model)
    reference = model(**batch.inputs, use_cache=False).loss * units
    reference.backward()
    theirs = gradients(model)
    assert head_rows == [torch.Size([units])]  # the head saw the supervised positions, nothing else
    assert units == int((batch.inputs["labels"] != -100).sum()) - int((batch.inputs["labels"][:, 0] != -100).sum())
    torch.testing.assert_close(summed, reference, rtol=1e-5, atol=1e-5)
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6, msg=name)
