"""Samples → model batch through the model's own processor and chat template.

Labels keep only the assistant answers, each through the token that ends its turn, found by rendering
the conversation (`trainer.chat.answers`), so any published template works, with or without
`{% generation %}` markers. Every batch is checked: each sample keeps at least one supervised token,
and its image tokens match what its images produce — otherwise a `BatchError` names the sample,
instead of a silent loss of 0 or the model's "image features and image tokens do not match" deep in
the forward. Samples longer than `max_length` are dropped whole and counted (truncation would cut
image tokens). A micro-batch without images can carry one blank image that no token attends to
(`trainer.batches.blank_image`), so that every rank runs the vision tower in every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from data_shards.sample import IMAGE_TOKEN, ImageData, Sample, Turn
from trainer.batches.blank_image import BlankImage
from trainer.batches.packing import mrope_merge, pack
from trainer.chat.answers import AnswerFinder, TemplateError
from trainer.chat.template import ChatRenderer
from trainer.chat.tokens import IGNORE_INDEX, tokenize
from trainer.models.families.rules import TILED, training_token_types


class BatchError(ValueError):
    pass


TEMPLATE_PROBE = Sample(
    "template-probe",
    [ImageData(b"", "png")],
    [
        Turn("user", f"{IMAGE_TOKEN}\nWhat is shown?"),
        Turn("assistant", "A shape."),
        Turn("user", "Which color?"),
        Turn("assistant", "Red."),
    ],
)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    keys: list[str]
    dropped: list[str] = field(default_factory=list)
    num_tokens: int = 0
    num_slots: int = 0
    targets: torch.Tensor | None = None  # the answers' indices in data.choices (choice objective)

    def __len__(self) -> int:
        return len(self.keys)


def question(sample: Sample) -> Sample:
    """The sample up to its final answer (its last assistant turn) with the images of those turns; a sample
    without an answer is all question."""
    answered = [index for index, turn in enumerate(sample.turns) if turn.role == "assistant"]
    if not answered:
        return sample
    turns = sample.turns[: answered[-1]]
    return replace(sample, turns=turns, images=sample.images[: sum(t.text.count(IMAGE_TOKEN) for t in turns)])


def messages(sample: Sample, with_answer: bool = True, image=lambda data: {}) -> list[dict[str, Any]]:
    """Chat messages with typed parts; each `<image>` placeholder becomes an image part, in order, carrying
    `image(data)` (nothing by default: templates only look at the part's type). Without the answer: the turns
    before the last assistant turn."""
    if sample.placeholder_count() != len(sample.images):
        raise BatchError(
            f"sample {sample.key!r}: {sample.placeholder_count()} {IMAGE_TOKEN} placeholders "
            f"for {len(sample.images)} images"
        )
    images = iter(sample.images)
    result = []
    for turn in (sample if with_answer else question(sample)).turns:
        parts = []
        for position, text in enumerate(turn.text.split(IMAGE_TOKEN)):
            if position:
                parts.append({"type": "image", **image(next(images))})
            text = text.lstrip("\n") if position else text
            if text:
                parts.append({"type": "text", "text": text})
        result.append({"role": turn.role, "content": parts})
    return result


def conversation(sample: Sample, with_answer: bool = True) -> list[dict[str, Any]]:
    """`messages` with each image part carrying its decoded image, as transformers' chat templates take them."""
    return messages(sample, with_answer, image=lambda data: {"image": data.decode()})


def prompt_images(sample: Sample) -> list:
    """The sample's decoded images, in placeholder order."""
    return [data.decode() for data in sample.images]


def last_assistant(sample: Sample) -> int:
    for index in range(len(sample.turns) - 1, -1, -1):
        if sample.turns[index].role == "assistant":
            return index
    raise BatchError(f"sample {sample.key!r} has no assistant turn")


def end_tokens(processor, generation_config=None) -> list[str]:
    """The tokens a model emits to end its turn: the tokenizer's eos first (inserted where a template writes no
    end-of-turn token), then the generation config's eos ids (e.g. Llama 3's <|eot_id|>)."""
    tokenizer = processor.tokenizer
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    tokens = [tokenizer.eos_token] + tokenizer.convert_ids_to_tokens(ids)
    return list(dict.fromkeys(t for t in tokens if t))


def build_collator(
    processor,
    model,
    max_length: int,
    template_source: str,
    packing: bool = False,
    supervise: str = "all",
    blank_image: bool = False,
) -> Collator:
    """The collator for `model` (its config and generation config): image-token rule, end-of-turn tokens, and a
    blank image for image-less micro-batches when several ranks must run the same modules."""
    collator = Collator(
        processor,
        max_length,
        *token_check_for(model.config),
        packing=packing,
        template_source=template_source,
        supervise=supervise,
        end_tokens=end_tokens(processor, getattr(model, "generation_config", None)),
        mrope_merge=mrope_merge(model.config),
        model_type=model.config.model_type,
    )
    collator.check_template()
    if blank_image:
        collator.blank_image = BlankImage(processor, collator.renderer.image_text())
    return collator


class Collator:
    """Picklable (runs in DataLoader workers): holds the processor, the answer finder and the per-image token check."""

    def __init__(
        self,
        processor,
        max_length: int,
        image_token_id: int | None,
        tokens_per_image=None,
        packing: bool = False,
        template_source: str = "the model's chat template",
        end_tokens: list[str] | None = None,
        supervise: str = "all",
        blank_image=None,
        mrope_merge: int | None = None,
        model_type: str | None = None,
    ):
        self.processor = processor
        self.max_length = max_length
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image
        self.packing = packing
        self.renderer = ChatRenderer(processor, template_source)
        self.answers = AnswerFinder(self.renderer, end_tokens or [processor.tokenizer.eos_token], supervise)
        self.blank_image = blank_image
        self.mrope_merge = mrope_merge
        self.model_type = model_type

    def check_template(self) -> None:
        """Finds the answers of a two-exchange conversation with an image, so that a template that cannot be split
        into prompt and answer stops the run before its first step (a `TemplateError` naming its source)."""
        self.answers(messages(TEMPLATE_PROBE))
        self.answers.prompt(messages(question(TEMPLATE_PROBE)))

    def render(self, sample: Sample):
        try:
            return self.answers(messages(sample))
        except TemplateError as error:
            raise BatchError(f"sample {sample.key!r}: {error}") from None

    def encode(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """The processor's encoding as tensors, with `answer_mask` marking the supervised tokens."""
        rendered = [self.render(s) for s in samples]
        return tokenize(
            self.processor, [r.text for r in rendered], [prompt_images(s) for s in samples], [r.spans for r in rendered]
        )

    def __call__(self, samples: list[Sample]) -> Batch:
        dropped, kept = [], list(samples)
        encoded = self.encode(kept) if kept else None
        if encoded is not None:
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            too_long = [s.key for s, n in zip(kept, lengths) if n > self.max_length]
            if too_long:
                dropped = too_long
                kept = [s for s in kept if s.key not in too_long]
                encoded = self.encode(kept) if kept else None
        if encoded is None:
            return Batch({}, [], dropped)
        inputs = self.finish(encoded, kept)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        if self.packing:
            inputs = pack(
                inputs,
                lengths,
                [len(s.images) for s in kept],
                self.max_length,
                self.processor.tokenizer.pad_token_id,
                self.mrope_merge,
            )
        if self.blank_image is not None and not any(s.images for s in kept):
            inputs = self.blank_image.add(inputs, packed=self.packing)
        slots = inputs["input_ids"].numel()
        return Batch(inputs, [s.key for s in kept], dropped, int(sum(lengths)), slots)

    def finish(self, encoded: dict[str, torch.Tensor], samples: list[Sample]) -> dict[str, torch.Tensor]:
        mask = encoded.pop("answer_mask").bool() & encoded["attention_mask"].bool()
        for row, sample in enumerate(samples):
            if not mask[row].any():
                raise BatchError(
                    f"sample {sample.key!r}: no supervised token (the answer is empty, or the "
                    "chat template does not write it)"
                )
        self.check_image_tokens(encoded, samples)
        encoded["labels"] = torch.where(mask, encoded["input_ids"], IGNORE_INDEX)
        token_types = training_token_types(self.model_type, mask)
        if token_types is not None:
            encoded["token_type_ids"] = token_types
        return dict(encoded)

    def check_image_tokens(self, encoded: dict[str, torch.Tensor], samples: list[Sample]) -> None:
        if self.image_token_id is None or self.tokens_per_image is None:
            return
        found = (encoded["input_ids"] == self.image_token_id).sum(dim=1).tolist()
        expected = self.tokens_per_image(encoded, samples)
        for sample, have, want in zip(samples, found, expected):
            if have != want:
                raise BatchError(
                    f"sample {sample.key!r}: {have} image tokens in the text but its "
                    f"{len(sample.images)} images give {want} features"
                )


@dataclass
class FixedCount:
    """Families whose every image gives the same number of features (LLaVA-1.5: image_seq_length)."""

    count: int

    def __call__(self, encoded, samples) -> list[int]:
        return [self.count * len(s.images) for s in samples]


@dataclass
class GridCount:
    """Qwen2-VL-style: an image of grid t×h×w patches gives t·h·w / merge² features."""

    merge: int

    def __call__(self, encoded, samples) -> list[int]:
        per_image = (
            (encoded["image_grid_thw"].prod(dim=1) // (self.merge**2)).tolist() if "image_grid_thw" in encoded else []
        )
        counts, start = [], 0
        for sample in samples:
            counts.append(int(sum(per_image[start : start + len(sample.images)])))
            start += len(sample.images)
        return counts


def token_check_for(model_config) -> tuple[int | None, Any]:
    """The image token id and feature-count rule from the model's config (None where the count varies)."""
    image_token = getattr(model_config, "image_token_id", None) or getattr(model_config, "image_token_index", None)
    vision = getattr(model_config, "vision_config", None)
    merge = getattr(vision, "spatial_merge_size", None)
    if merge:
        return image_token, GridCount(merge)
    fixed = getattr(model_config, "image_grid_pinpoints", None) is None and model_config.model_type not in TILED
    if fixed and getattr(model_config, "image_seq_length", None):
        return image_token, FixedCount(model_config.image_seq_length)
    return image_token, None
