"""Collator: samples → the batch the real model trains on, for each tiny family (llava, llava_next, qwen2_vl).

What is checked against something other than the collator itself:
- supervised tokens: decoded per contiguous span and compared with the answers written out in the
  family's chat format (trainer/testing/tiny.py's docstring), so prompt, system, image and padding tokens
  can never be supervised unnoticed;
- image tokens: per row, against the lengths of the features the model's own vision side produces
  (`get_image_features(...).pooler_output`, one entry per image), not against the collator's rule;
- the batch is what the model accepts: a real forward gives a finite loss.
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from data_shards.sample import ImageData, Sample, Turn
from trainer.batches.collate import (
    IGNORE_INDEX,
    BatchError,
    Collator,
    FixedCount,
    GridCount,
    build_collator,
    conversation,
    token_check_for,
)
from trainer.batches.packing import packed_rows
from trainer.models.processor import load_processor
from trainer.testing.tiny import FAMILIES, SMALL_IMAGE, build_tiny_model

# One supervised answer, decoded: the assistant text and the end-of-turn token that closes it (the
# published llava-1.5 template writes none: the collator adds </s>; Qwen2-VL's newline after <|im_end|>
# is not supervised).
ANSWER_FORMAT = {"llava": "{}</s>", "llava_next": "{}</s>", "qwen2_vl": "{}<|im_end|>"}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def collate_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("collate-models")
    return {family: build_tiny_model(family, root / family, image_size=SMALL_IMAGE) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded_cache() -> dict[str, tuple]:
    return {}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def loaded(collate_models, loaded_cache, family):
    """(model in eval mode, processor), loaded once per family for this module; no test changes them."""
    if family not in loaded_cache:
        model = AutoModelForImageTextToText.from_pretrained(collate_models[family]).eval()
        loaded_cache[family] = model, load_processor(collate_models[family])
    return loaded_cache[family]


def image(seed: int, width: int = 32, height: int = 32) -> ImageData:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return ImageData(buffer.getvalue(), "png")


def varied_samples() -> list[Sample]:
    """One image; two images (different sizes) with a system turn; text only; two exchanges, image in the first."""
    return [
        Sample("one-image", [image(1)], [Turn("user", "<image>\nWhat color is the shape?"), Turn("assistant", "red")]),
        Sample(
            "two-images",
            [image(2), image(3, width=48, height=24)],
            [
                Turn("system", "Answer with one word."),
                Turn(
                    "user",
                    "<image>\n<image>\nCompare the first image with the second. Answer First, Second or Similar.",
                ),
                Turn("assistant", "Second"),
            ],
        ),
        Sample(
            "text-only",
            [],
            [Turn("user", "Which color do you get by mixing blue and yellow?"), Turn("assistant", "green")],
        ),
        Sample(
            "two-exchanges",
            [image(4)],
            [
                Turn("user", "<image>\nWhat shape is this?"),
                Turn("assistant", "circle"),
                Turn("user", "What color is the shape?"),
                Turn("assistant", "blue"),
            ],
        ),
    ]


def collator_for(model, processor, max_length: int = 1024, **options) -> Collator:
    return build_collator(processor, model, max_length, "the tiny kit's template", **options)


# ---------------------------------------------------------------------------------------------- helpers


def supervised_spans(labels: torch.Tensor) -> list[list[int]]:
    """Token ids of each maximal run of supervised (label != -100) positions in one row."""
    spans, current = [], []
    for token in labels.tolist():
        if token == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(token)
    return spans + ([current] if current else [])


def model_image_features_per_row(model, inputs: dict[str, torch.Tensor], samples: list[Sample]) -> list[int]:
    """Feature count per row from the model's vision side; images belong to rows in sample order."""
    if "pixel_values" not in inputs:
        return [0] * len(samples)
    extra = {key: inputs[key] for key in ("image_sizes", "image_grid_thw") if key in inputs}
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"], **extra).pooler_output
    per_image = [len(f) for f in features]
    assert len(per_image) == sum(len(s.images) for s in samples), "the batch holds another number of images"
    counts, start = [], 0
    for sample in samples:
        counts.append(sum(per_image[start : start + len(sample.images)]))
        start += len(sample.images)
    return counts


def image_tokens_per_row(model, inputs) -> list[int]:
    return (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()


def solo_encoding(model, processor, sample: Sample) -> dict[str, torch.Tensor]:
    """The sample collated on its own, without padding."""
    return collator_for(model, processor)([sample]).inputs


def row(inputs, key: str, index: int) -> torch.Tensor:
    return inputs[key][index][inputs["attention_mask"][index].bool()]


class ModelRule:
    """A `tokens_per_image` rule that asks the model's vision side, optionally off by `bump` for some keys."""

    def __init__(self, model, bump: dict[str, int] | None = None):
        self.model, self.bump = model, bump or {}

    def __call__(self, encoded, samples):
        counts = model_image_features_per_row(self.model, encoded, samples)
        return [count + self.bump.get(sample.key, 0) for count, sample in zip(counts, samples)]


# ---------------------------------------------------------------------------------------------- labels & images


def test_labels_supervise_exactly_the_answers_and_their_end_tokens(loaded, family):
    model, processor = loaded
    samples = varied_samples()
    batch = collator_for(model, processor)(samples)
    inputs = batch.inputs
    assert batch.keys == [s.key for s in samples] and batch.dropped == []
    labels, attention = inputs["labels"], inputs["attention_mask"].bool()
    assert labels.shape == inputs["input_ids"].shape
    assert (~attention).any(), "the batch should have padding for this test to mean anything"
    assert (labels[~attention] == IGNORE_INDEX).all(), "a padding position is supervised"
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], inputs["input_ids"][supervised])
    tokenizer = processor.tokenizer
    for index, sample in enumerate(samples):
        decoded = [tokenizer.decode(span).strip() for span in supervised_spans(labels[index])]
        assert decoded == [ANSWER_FORMAT[family].format(answer) for answer in sample.answers()], sample.key
    # no image token and no system / user text is ever a label
    assert not (labels == model.config.image_token_id).any()
    assert batch.num_tokens == int(attention.sum()) and batch.num_slots == labels.numel()


def test_image_tokens_per_row_match_the_models_image_features(loaded, family):
    model, processor = loaded
    samples = varied_samples()
    inputs = collator_for(model, processor)(samples).inputs
    expected = model_image_features_per_row(model, inputs, samples)
    assert image_tokens_per_row(model, inputs) == expected
    assert expected[2] == 0 and all(count > 0 for i, count in enumerate(expected) if i != 2)


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])  # templates that close answers themselves
def test_encoding_equals_the_processors_own_tensor_encoding(loaded, family):
    model, processor = loaded
    samples = varied_samples()
    ours = collator_for(model, processor).encode(samples)
    ours.pop("answer_mask")
    theirs = processor.apply_chat_template(
        [conversation(s) for s in samples],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


def test_real_forward_on_the_batch_gives_a_finite_loss(loaded, family):
    model, processor = loaded
    inputs = collator_for(model, processor)(varied_samples()).inputs
    with torch.no_grad():
        loss = model(**inputs).loss
    assert loss is not None and torch.isfinite(loss) and loss > 0


def test_batch_rows_equal_each_sample_encoded_alone(loaded, family):
    """Batching (padding, stacking images) changes nothing in any sample's tokens or labels."""
    model, processor = loaded
    samples = varied_samples()
    inputs = collator_for(model, processor)(samples).inputs
    for index, sample in enumerate(samples):
        alone = solo_encoding(model, processor, sample)
        assert torch.equal(row(inputs, "input_ids", index), alone["input_ids"][0]), sample.key
        assert torch.equal(row(inputs, "labels", index), alone["labels"][0]), sample.key


# ---------------------------------------------------------------------------------------------- over-length samples


def test_over_length_samples_are_dropped_whole_and_the_rest_kept_intact(loaded, family):
    model, processor = loaded
    samples = varied_samples()
    lengths = {s.key: solo_encoding(model, processor, s)["input_ids"].shape[1] for s in samples}
    ordered = sorted(lengths.values())
    assert ordered[-1] > ordered[-2] > ordered[0], lengths  # distinct lengths make the cut unambiguous
    # max_length exactly the second-longest length: that sample stays (<=), only the longest goes
    for max_length, expect_dropped in ((ordered[-2], 1), (ordered[-2] - 1, 2)):
        batch = collator_for(model, processor, max_length=max_length)(samples)
        dropped = [s.key for s in samples if lengths[s.key] > max_length]
        kept = [s for s in samples if lengths[s.key] <= max_length]
        assert len(dropped) == expect_dropped
        assert batch.dropped == dropped and batch.keys == [s.key for s in kept]
        inputs = batch.inputs
        assert inputs["input_ids"].shape == (len(kept), max(lengths[s.key] for s in kept))
        for index, sample in enumerate(kept):
            alone = solo_encoding(model, processor, sample)
            assert torch.equal(row(inputs, "input_ids", index), alone["input_ids"][0]), sample.key
        # images of dropped samples left the batch too; every kept image keeps all of its tokens
        assert image_tokens_per_row(model, inputs) == model_image_features_per_row(model, inputs, kept)
        with torch.no_grad():
            assert torch.isfinite(model(**inputs).loss)


def test_a_batch_with_every_sample_too_long_is_empty(loaded, family):
    model, processor = loaded
    samples = varied_samples()
    batch = collator_for(model, processor, max_length=4)(samples)
    assert len(batch) == 0 and batch.inputs == {} and batch.dropped == [s.key for s in samples]


# ---------------------------------------------------------------------------------------------- errors


def without_generation_markers(processor):
    changed = copy.deepcopy(processor)
    changed.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", processor.chat_template)
    assert not re.search(r"(end)?generation\s*-?%\}", changed.chat_template)
    assert changed.chat_template != processor.chat_template
    return changed


@pytest.mark.parametrize("family", ["llava"])  # the one of the three whose published template has markers
def test_a_template_without_generation_markers_gives_the_same_labels(loaded, family):
    """Most published templates have no {% generation %}: the answers are found all the same."""
    model, processor = loaded
    marked = collator_for(model, processor)(varied_samples()).inputs
    unmarked = collator_for(model, without_generation_markers(processor))(varied_samples()).inputs
    assert set(marked) == set(unmarked)
    for key in marked:
        assert torch.equal(marked[key], unmarked[key]), key
    assert processor.chat_template.count("generation") >= 2  # the shared processor was not touched


def test_only_the_sample_without_an_answer_is_named(loaded, family):
    model, processor = loaded
    no_answer = Sample("no-answer", [], [Turn("user", "What color is the shape?")])
    with pytest.raises(BatchError, match="no supervised token") as raised:
        collator_for(model, processor)([varied_samples()[0], no_answer])
    assert "'no-answer'" in str(raised.value) and "one-image" not in str(raised.value)


def test_model_derived_rule_accepts_the_batch_and_an_off_by_one_rule_names_the_sample(loaded, family):
    model, processor = loaded
    image_token = token_check_for(model.config)[0]
    assert image_token == model.config.image_token_id
    samples = varied_samples()
    Collator(processor, 1024, image_token, ModelRule(model))(samples)  # the model's own count: accepted
    wrong = Collator(processor, 1024, image_token, ModelRule(model, bump={"two-images": 1}))
    with pytest.raises(BatchError, match="'two-images'") as raised:
        wrong(samples)
    assert "one-image" not in str(raised.value)


@pytest.mark.parametrize("family", ["llava"])  # FixedCount is LLaVA-1.5's rule
def test_fixed_count_off_by_one_raises_for_llava(loaded, family):
    model, processor = loaded
    image_token, rule = token_check_for(model.config)
    assert rule == FixedCount(model.config.image_seq_length)
    collator = Collator(processor, 1024, image_token, FixedCount(model.config.image_seq_length + 1))
    with pytest.raises(BatchError, match="'one-image': 16 image tokens in the text but its 1 images give 17"):
        collator(varied_samples())


def test_token_check_rules_per_family(loaded, family):
    model, _ = loaded
    image_token, rule = token_check_for(model.config)
    assert image_token == model.config.image_token_id
    expected = {"llava": FixedCount, "llava_next": type(None), "qwen2_vl": GridCount}[family]
    assert isinstance(rule, expected)
    if family == "qwen2_vl":
        assert rule.merge == model.config.vision_config.spatial_merge_size


def test_more_placeholders_than_images_raises_batch_error(loaded, family):
    model, processor = loaded
    short = Sample(
        "short-of-images",
        [image(5)],
        [Turn("user", "<image>\n<image>\nCompare the two images."), Turn("assistant", "Similar")],
    )
    with pytest.raises(BatchError, match="'short-of-images'"):
        collator_for(model, processor)([varied_samples()[0], short])


def test_more_images_than_placeholders_raises_batch_error(loaded, family):
    model, processor = loaded
    extra = Sample(
        "extra-image",
        [image(6), image(7)],
        [Turn("user", "<image>\nWhat color is the shape?"), Turn("assistant", "red")],
    )
    with pytest.raises(BatchError, match="'extra-image'"):
        collator_for(model, processor)([varied_samples()[0], extra])


# ---------------------------------------------------------------------------------------------- conversation()


def test_conversation_without_answer_drops_only_the_final_assistant_turn():
    sample = varied_samples()[3]
    full = conversation(sample)
    prompt = conversation(sample, with_answer=False)
    assert [m["role"] for m in full] == ["user", "assistant", "user", "assistant"]
    assert prompt == full[:3]
    assert full[3] == {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}


def test_conversation_turns_placeholders_into_ordered_image_parts():
    sample = varied_samples()[1]
    messages = conversation(sample)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    # the newline after each placeholder belongs to it; images keep their order and size
    assert parts[2]["text"] == "Compare the first image with the second. Answer First, Second or Similar."
    assert [p["image"].size for p in parts[:2]] == [(32, 32), (48, 24)]
    assert conversation(sample, with_answer=False) == messages[:2]


# ---------------------------------------------------------------------------------------------- packing


def test_packed_rows_hold_every_sample_once_within_the_length():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(5, 200, size=int(rng.integers(1, 12))).tolist()
        max_length = int(rng.integers(max(lengths), 600))
        rows = packed_rows(lengths, max_length)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
        assert all(row == sorted(row) for row in rows)
        assert len(rows) <= len(lengths)


def test_packed_rows_balance_better_than_cutting_the_batch_in_order():
    lengths = [190, 190, 30, 30]  # cut in order: 190 | 190 | 60, three rows; balanced: 220 and 220
    assert packed_rows(lengths, 230) == [[0, 2], [1, 3]]
    lengths = [100, 100, 10, 10, 10, 10]  # cut in order: 100 | 100 + 10 + 10 | 10 + 10; balanced: 120 and 120
    assert packed_rows(lengths, 130) == [[0, 2, 4], [1, 3, 5]]


def test_a_packed_batch_gives_the_padded_loss_with_images_following_their_samples(loaded, family):
    """For Qwen2-VL this also checks the packed 3-D rotary positions: the padded batch's come from the model."""
    model, processor = loaded
    samples = varied_samples()
    padded = collator_for(model, processor)(samples)
    lengths = padded.inputs["attention_mask"].sum(dim=1).tolist()
    max_length = next(
        m
        for m in range(max(lengths), sum(lengths))  # rows that take samples out of batch order
        if [i for row in packed_rows(lengths, m) for i in row] != list(range(len(samples)))
    )
    packed = collator_for(model, processor, max_length=max_length, packing=True)(samples)
    assert packed.num_tokens == padded.num_tokens and packed.num_slots < padded.num_slots
    with torch.no_grad():
        padded_loss = model(**padded.inputs, use_cache=False).loss
        packed_loss = model(**packed.inputs, use_cache=False).loss
        swapped_loss = model(**misplace_images(packed.inputs), use_cache=False).loss
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    assert (swapped_loss - padded_loss).abs() > 1e-4  # the control: misplaced images change the loss


def misplace_images(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with its first and last image swapped (Qwen2-VL: their grids and patch rows with them)."""
    if "image_grid_thw" not in inputs:
        return dict(inputs, pixel_values=inputs["pixel_values"].flip(0))
    grids, pixels = inputs["image_grid_thw"], inputs["pixel_values"]
    sizes = grids.prod(dim=1).tolist()
    chunks = list(pixels.split(sizes))
    chunks[0], chunks[-1] = chunks[-1], chunks[0]
    return dict(
        inputs, pixel_values=torch.cat(chunks), image_grid_thw=grids[[len(sizes) - 1, *range(1, len(sizes) - 1), 0]]
    )


@pytest.mark.parametrize("family", ["qwen2_vl"])
def test_packed_mrope_positions_restart_per_sample(loaded, family):
    """Each packed sample's text and 3-D positions equal the model's own for that sample alone."""
    model, processor = loaded
    samples = varied_samples()
    packed = collator_for(model, processor, max_length=4096, packing=True)(samples).inputs
    positions = packed["position_ids"]
    assert positions.shape[0] == 4 and positions.shape[1] == 1  # one row: text positions, then t, h, w
    offset = 0
    for sample in samples:
        alone = collator_for(model, processor)([sample]).inputs
        length = alone["input_ids"].shape[1]
        expected, _ = model.model.get_rope_index(
            alone["input_ids"],
            alone["mm_token_type_ids"],
            alone.get("image_grid_thw"),
            attention_mask=alone["attention_mask"],
        )
        if "image_grid_thw" not in alone:
            expected = torch.arange(length).expand(3, 1, -1)
        assert torch.equal(positions[1:, :, offset : offset + length], expected), sample.key
        assert torch.equal(positions[0, 0, offset : offset + length], torch.arange(length)), sample.key
        offset += length
