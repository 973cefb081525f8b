"""The choice objective: prompts without the answer, the answer's index as target, the swapped twin, the loss."""

from __future__ import annotations

import math

import pytest
import torch
from test_collate import image
from transformers import AutoModelForImageTextToText

from data_shards.sample import IMAGE_TOKEN, Sample, Turn
from trainer.batches.choice import ChoiceCollator, choice_token_ids, swapped
from trainer.batches.collate import BatchError, build_collator
from trainer.chat.template import use_chat_template
from trainer.config.fields import ConfigError
from trainer.config.schema import load
from trainer.models.processor import load_processor
from trainer.train.objectives import ChoiceLoss

CHOICES = ["First", "Second", "Similar"]
MIRROR = ["Second", "First", "Similar"]
QUESTION = f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\nWhich shape is larger?"


@pytest.fixture(scope="module")
def collator(tiny_llava):
    processor = load_processor(str(tiny_llava))
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    return build_collator(processor, model, 1024, use_chat_template(processor, str(tiny_llava), "")), model


def pair(key: str, answer: str, seeds=(1, 2)) -> Sample:
    return Sample(key, [image(seeds[0]), image(seeds[1], 40, 24)], [Turn("user", QUESTION), Turn("assistant", answer)])


def test_choice_tokens_are_the_answers_first_tokens_and_must_differ(collator):
    collate, _ = collator
    ids = choice_token_ids(collate, CHOICES)
    tokens = collate.processor.tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["▁First", "▁Second", "▁Similar"]  # whole words in the tiny vocabulary, after the space
    with pytest.raises(ValueError, match="share a first token"):
        choice_token_ids(collate, ["First", "First one"])


def test_the_prompt_holds_no_answer_and_the_target_is_its_index(collator):
    collate, _ = collator
    samples = [pair("a", "Second"), pair("b", "Similar")]
    batch = ChoiceCollator(collate, CHOICES)(samples)
    assert batch.keys == ["a", "b"] and batch.targets.tolist() == [1, 2]
    choice_ids = choice_token_ids(collate, CHOICES)
    assert not torch.isin(batch.inputs["input_ids"], torch.tensor(choice_ids)).any()
    assert (batch.inputs["attention_mask"][:, -1] == 1).all()  # left-padded: every prompt ends in the last column
    assert "labels" not in batch.inputs


def test_swapped_twins_follow_their_pair_with_images_reversed_and_answer_mirrored(collator):
    collate, _ = collator
    sample = pair("a", "First")
    twin = swapped(sample, dict(zip(CHOICES, MIRROR)))
    assert twin.images == sample.images[::-1] and twin.turns[-1].text == "Second" and twin.key == "a/swapped"
    batch = ChoiceCollator(collate, CHOICES, MIRROR)([sample, pair("b", "Similar")])
    assert batch.keys == ["a", "b"] and batch.targets.tolist() == [0, 1, 2, 2]
    assert batch.inputs["input_ids"].shape[0] == 4


def test_an_answer_outside_the_choices_names_the_sample(collator):
    collate, _ = collator
    with pytest.raises(BatchError, match="'odd'.*'Bigger' is not one of"):
        ChoiceCollator(collate, CHOICES)([pair("odd", "Bigger")])


def test_a_single_image_sample_cannot_be_swapped():
    one = Sample("one", [image(1)], [Turn("user", f"{IMAGE_TOKEN}\nWhich?"), Turn("assistant", "First")])
    with pytest.raises(BatchError, match="'one'.*needs two images"):
        swapped(one, dict(zip(CHOICES, MIRROR)))


def test_the_loss_on_the_real_model_is_finite_and_reaches_the_projector(collator):
    collate, model = collator
    batch = ChoiceCollator(collate, CHOICES, MIRROR)([pair("a", "First"), pair("b", "Second", (3, 4))])
    loss, parts = ChoiceLoss(choice_token_ids(collate, CHOICES), [1, 0, 2], 1.0)(model, batch.inputs, batch.targets)
    loss.backward()
    assert math.isfinite(float(loss)) and set(parts) == {"loss_ce", "accuracy", "loss_consistency"}
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


class FixedLogits(torch.nn.Module):
    """A model whose next-token logits are given: rows × vocabulary at the last position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, use_cache=False, logits_to_keep=0, **inputs):
        return type("Output", (), {"logits": self.logits[:, None, :]})


def test_cross_entropy_accuracy_and_consistency_against_hand_computed_values():
    # vocabulary of 4, choices at ids 1, 2, 3 (First, Second, Similar); rows: pair, then its swapped twin
    logits = torch.tensor(
        [
            [9.0, math.log(2), 0.0, 0.0],  # p = (1/2, 1/4, 1/4) over (First, Second, Similar); target First
            [9.0, 0.0, math.log(2), 0.0],  # the twin: (1/4, 1/2, 1/4), mirrored (1/2, 1/4, 1/4); target Second
        ]
    )
    objective = ChoiceLoss([1, 2, 3], [1, 0, 2], swap_weight=0.5)
    loss, parts = objective(FixedLogits(logits), {}, torch.tensor([0, 1]))
    assert float(parts["loss_ce"]) == pytest.approx(math.log(2))  # −log ½ in both rows
    assert float(parts["accuracy"]) == 1.0
    assert float(parts["loss_consistency"]) == pytest.approx(0.0, abs=1e-7)  # the twin mirrors the pair exactly
    assert float(loss) == pytest.approx(2 * math.log(2))  # summed over the rows (the trainer weights by units)
    assert objective.units({}, torch.tensor([0, 1])) == 2
    inconsistent = torch.tensor([[9.0, math.log(2), 0.0, 0.0], [9.0, math.log(2), 0.0, 0.0]])
    _, parts = objective(FixedLogits(inconsistent), {}, torch.tensor([0, 1]))
    # p = (½, ¼, ¼), mirrored twin q = (¼, ½, ¼): KL(p‖q) = ½ log 2 − ¼ log 2 = ¼ log 2 = KL(q‖p)
    assert float(parts["loss_consistency"]) == pytest.approx(0.25 * math.log(2))
    assert float(parts["accuracy"]) == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.choices=[A]"], "two or more distinct"),
        (["data.choices=[A,A]"], "two or more distinct"),
        (["data.choices=[A,B]", "train.swap_consistency=1", "data.swap_choices=[A,C]"], "must pair up"),
        (["data.choices=[A,B,C]", "train.swap_consistency=1", "data.swap_choices=[B,C,A]"], "must pair up"),
        (["data.choices=[A,B]", "data.packing=true"], "not with train.objective=choice"),
    ],
)
def test_choice_settings_are_checked_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(None, ["model.path=m", "data.train=t", "train.objective=choice", *overrides])


def test_swap_consistency_needs_the_choice_objective():
    with pytest.raises(ConfigError, match="needs train.objective=choice"):
        load(None, ["model.path=m", "data.train=t", "train.swap_consistency=0.5"])
