"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: a CLIP or SigLIP tower, an MLP projector, `<image>` expanded by the
processor to one token per image feature."""

from __future__ import annotations

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessorPil,
    LlavaProcessor,
    SiglipVisionConfig,
)

from trainer.models.families.published import Published
from trainer.models.processor import ImageOnlyLlavaOnevisionProcessor
from trainer.testing.kit.common import HEADS, HIDDEN, INTERMEDIATE, LAYERS, scaled, text_config, token_id


def extra_specials(published: Published) -> list[str]:
    return [published.special("image_token"), *published.data["special_tokens"].get("extra", [])]


def input_size(published: Published) -> int:
    return published.model_config["vision_config"]["image_size"]


def vision_config(published: Published, image_size: int | None):
    vision = published.model_config["vision_config"]
    side = image_size or vision["image_size"]
    kind = SiglipVisionConfig if vision["model_type"].startswith("siglip") else CLIPVisionConfig
    return kind(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=side,
        patch_size=vision["patch_size"],
    )


def pinpoints(published: Published, image_size: int | None) -> list[list[int]]:
    grid = published.model_config["image_grid_pinpoints"]
    return [
        [scaled(h, image_size, input_size(published)), scaled(w, image_size, input_size(published))] for h, w in grid
    ]


def build_config(published: Published, tokenizer, text: dict, image_size: int | None):
    mc = published.model_config
    vision = vision_config(published, image_size)
    common = dict(
        text_config=text_config(published, tokenizer, text),
        vision_config=vision,
        image_token_index=token_id(tokenizer, published.special("image_token")),
        vision_feature_layer=mc["vision_feature_layer"],
        vision_feature_select_strategy=mc["vision_feature_select_strategy"],
        projector_hidden_act=mc.get("projector_hidden_act", "gelu"),
    )
    if published.model_type == "llava":
        patches = (vision.image_size // vision.patch_size) ** 2
        return LlavaConfig(**common, image_seq_length=patches)
    if published.model_type == "llava_next":
        return LlavaNextConfig(**common, image_grid_pinpoints=pinpoints(published, image_size))
    return LlavaOnevisionConfig(
        **common,
        image_grid_pinpoints=pinpoints(published, image_size),
        vision_aspect_ratio=mc.get("vision_aspect_ratio", "anyres_max_9"),
        video_token_index=token_id(tokenizer, published.special("video_token")),
    )


def build_processor(published: Published, tokenizer, image_size: int | None):
    settings, processor = published.image_processor, published.processor
    side = image_size or input_size(published)
    normalise = dict(image_mean=settings["image_mean"], image_std=settings["image_std"])
    template = published.chat_template
    if published.model_type == "llava_onevision":
        images = LlavaOnevisionImageProcessorPil(
            size={"height": side, "width": side}, image_grid_pinpoints=pinpoints(published, image_size), **normalise
        )
        vision = published.model_config["vision_config"]
        tokens = (side // vision["patch_size"]) ** 2
        return ImageOnlyLlavaOnevisionProcessor(
            images,
            tokenizer,
            chat_template=template,
            num_image_tokens=tokens,
            vision_feature_select_strategy=processor["vision_feature_select_strategy"],
            vision_aspect_ratio=published.model_config.get("vision_aspect_ratio"),
        )
    clip = dict(
        patch_size=processor["patch_size"],
        num_additional_image_tokens=processor["num_additional_image_tokens"],
        vision_feature_select_strategy=processor["vision_feature_select_strategy"],
    )
    sizes = dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side}, **normalise)
    if published.model_type == "llava":
        return LlavaProcessor(CLIPImageProcessorPil(**sizes), tokenizer, chat_template=template, **clip)
    images = LlavaNextImageProcessorPil(**sizes, image_grid_pinpoints=pinpoints(published, image_size))
    return LlavaNextProcessor(images, tokenizer, chat_template=template, **clip)
