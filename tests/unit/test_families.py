"""Every family of the tiny kit, built with what its real checkpoint publishes, through the trainer's data path.

Checked against something other than the collator: supervised spans decode to the answers followed by
the family's published end-of-turn token; the prompt a training row puts before its last answer is the
prompt `evaluate`/`predict` generate from; the model's own forward and backward; a published template
that cannot be split into prompt and answer is refused, naming its file.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import REPLACED_TEMPLATES
from test_collate import image, supervised_spans
from transformers import AutoModelForImageTextToText
from transformers.utils.chat_template_utils import render_jinja_template

from data_shards.sample import Sample, Turn
from trainer.batches.collate import IGNORE_INDEX, build_collator, messages
from trainer.batches.prompts import prompt_inputs
from trainer.chat.answers import TemplateError
from trainer.chat.template import ChatRenderer, template_source, use_chat_template
from trainer.models.families.published import load
from trainer.models.families.rules import packing_problem
from trainer.models.loading import lora_targets
from trainer.models.mllama_fix import mask_image_free_rows
from trainer.models.parts import find_parts
from trainer.models.processor import load_processor
from trainer.testing.tiny import KITS, build_tiny_model

# A published template that renders the generation prompt otherwise than the start of an assistant turn (the
# trainer refuses it), or none published (PaliGemma): these families train with the template in configs/templates/.
UNSPLITTABLE_TEMPLATES = sorted(f for f in REPLACED_TEMPLATES if load(KITS[f][0]).chat_template is not None)


def mixed_samples() -> list[Sample]:
    """One image; text only over two exchanges; two images of different sizes (another language too)."""
    return [
        Sample(
            "one-image",
            [image(1, 64, 48)],
            [Turn("user", "<image>\nWhat color is the shape?"), Turn("assistant", "red")],
        ),
        Sample(
            "text-only",
            [],
            [
                Turn("user", "Which color do you get by mixing blue and yellow?"),
                Turn("assistant", "green"),
                Turn("user", "And red and white?"),
                Turn("assistant", "pink"),
            ],
        ),
        Sample(
            "two-images",
            [image(2), image(3, 40, 72)],
            [
                Turn("user", "<image>\n<image>\nCompare the first image with the second. 比较两张图片。"),
                Turn("assistant", "Second"),
            ],
        ),
    ]


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_tiny_model(family, root / family) for family in KITS}


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


@pytest.fixture(params=sorted(KITS))
def family(request) -> str:
    return request.param


@pytest.fixture
def loaded(family_models, cache, family):
    """(model, processor with the template the family trains with, template source), once per family."""
    if family not in cache:
        path = family_models[family]
        model = mask_image_free_rows(AutoModelForImageTextToText.from_pretrained(path))  # as the trainer loads it
        processor = load_processor(path)
        source = use_chat_template(processor, path, REPLACED_TEMPLATES.get(family))
        cache[family] = model, processor, source
    return cache[family]


def collator(loaded, **options):
    model, processor, source = loaded
    return build_collator(processor, model, 1 << 20, source, **options)


def test_the_saved_template_is_the_published_one(family_models, family):
    published = load(KITS[family][0])
    path = family_models[family]
    processor = load_processor(path)
    assert processor.chat_template == published.chat_template
    if published.chat_template is None:  # no file of the folder holds a template, and training without one refused
        assert template_source(path) == str(path)
        with pytest.raises(ValueError, match=f"{path}: the model publishes no chat template"):
            ChatRenderer(processor, template_source(path))
        return
    assert ("{% generation %}" in processor.chat_template) == published.data["has_generation_markers"]


def test_supervised_spans_are_the_answers_and_the_end_of_turn_token(loaded, family):
    model, processor, _ = loaded
    samples = mixed_samples()
    labels = collator(loaded)(samples).inputs["labels"]
    end = load(KITS[family][0]).data["end_of_turn"]
    for row, sample in zip(labels, samples):
        spans = supervised_spans(row)
        decoded = [processor.tokenizer.decode(span).strip() for span in spans]
        assert decoded == [answer + end for answer in sample.answers()], sample.key


def test_answers_agree_with_the_generation_markers_where_the_template_has_them(loaded, family):
    """The cross-check: the text of each `{% generation %}` span is the answer found by rendering prefixes (the
    end-of-turn token the collator adds where the template writes none aside)."""
    model, processor, _ = loaded
    if "{% generation %}" not in processor.chat_template:
        pytest.skip("this family's template has no generation markers")
    build = collator(loaded)
    end = load(KITS[family][0]).data["end_of_turn"]
    for sample in mixed_samples():
        chat = messages(sample)
        (marked,), (indices,) = render_jinja_template(
            [chat],
            chat_template=processor.chat_template,
            return_assistant_tokens_mask=True,
            **processor.tokenizer.special_tokens_map,
        )
        rendered = build.answers(chat)
        ours = [rendered.text[start:end_].removesuffix(end).strip() for start, end_ in rendered.spans]
        assert ours == [marked[start:end_].strip() for start, end_ in indices], sample.key


def test_training_prompts_are_the_inference_prompts(loaded, family):
    """The tokens before a row's last answer are exactly what generation is given for that sample."""
    model, processor, _ = loaded
    build = collator(loaded)
    left = copy.deepcopy(processor)
    left.tokenizer.padding_side = "left"
    for sample in mixed_samples():
        inputs = build([sample]).inputs
        start = supervised_starts(inputs["labels"][0])[-1]
        prompt = prompt_inputs(build, left, [sample])["input_ids"][0]
        assert inputs["input_ids"][0, :start].tolist() == prompt.tolist(), sample.key


def test_forward_backward_reach_every_trained_part(loaded, family):
    model, processor, _ = loaded
    model = copy.deepcopy(model).train()
    parts = find_parts(model)
    targets = lora_targets(model, parts, [])
    assert targets and all(parts.part_of(name + ".x") == "language" for name in targets)
    loss = model(**collator(loaded)(mixed_samples()).inputs, use_cache=False).loss
    assert torch.isfinite(loss)
    loss.backward()
    projector = [p for n, p in model.named_parameters() if parts.part_of(n) == "projector"]
    assert projector and all(p.grad is not None and torch.isfinite(p.grad).all() for p in projector)


def test_a_blank_image_changes_neither_loss_nor_gradients(loaded, family):
    """A text-only micro-batch with the blank image runs the vision side (zero gradients there) and gives the
    loss and gradients it gives without it."""
    model, processor, _ = loaded
    model = copy.deepcopy(model).train()
    samples = [mixed_samples()[1]]
    results = []
    for blank in (False, True):
        model.zero_grad()
        loss = model(**collator(loaded, blank_image=blank)(samples).inputs, use_cache=False).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (plain, plain_grads), (blank, blank_grads) = results
    torch.testing.assert_close(blank, plain, rtol=1e-6, atol=1e-6)
    vision_side = [n for n, g in blank_grads.items() if g is not None and plain_grads[n] is None]
    assert vision_side, "the blank image should reach parameters a text-only batch leaves untouched"
    for name, grad in blank_grads.items():
        if plain_grads[name] is None:
            assert grad is None or not grad.any(), name
        else:
            torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6)


def test_packing_gives_the_padded_loss_or_is_refused_with_the_reason(loaded, family):
    model, processor, _ = loaded
    problem = packing_problem(model.config.model_type)
    if problem:
        assert model.config.model_type in problem and "data.packing=false" in problem
        return
    samples = mixed_samples()
    padded = collator(loaded)(samples)
    packed = collator(loaded, packing=True)(samples)
    assert packed.num_tokens == padded.num_tokens and packed.num_slots < padded.num_slots
    with torch.no_grad():
        expected = model(**padded.inputs, use_cache=False).loss
        torch.testing.assert_close(model(**packed.inputs, use_cache=False).loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", UNSPLITTABLE_TEMPLATES)
def test_a_published_template_that_cannot_be_split_is_refused_naming_its_file(family_models, family):
    path = family_models[family]
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_processor(path)
    source = template_source(path)
    assert Path(source).is_file() and Path(source).parent == path
    with pytest.raises(TemplateError, match=f"{source}: the chat template cannot be split into prompt and answer"):
        build_collator(processor, model, 1024, source)


def supervised_starts(labels: torch.Tensor) -> list[int]:
    supervised = (labels != IGNORE_INDEX).tolist()
    return [i for i, on in enumerate(supervised) if on and (i == 0 or not supervised[i - 1])]
