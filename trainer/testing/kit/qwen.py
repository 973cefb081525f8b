"""Qwen2-VL and Qwen2.5-VL: a ViT over 14-pixel patches merged 2×2, 3-D multimodal rotary positions (mRoPE),
dynamic resolution between the published min_pixels and max_pixels."""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen2VLImageProcessorPil

from trainer.models.families.published import Published
from trainer.models.processor import image_only_processor_class
from trainer.testing.kit.common import HEADS, HIDDEN, INTERMEDIATE, LAYERS, text_config, token_id

MROPE_SECTION = [2, 3, 3]  # temporal, height, width: HEAD_DIM // 2 rotary frequencies, in the published 16:24:24 ratio


def extra_specials(published: Published) -> list[str]:
    return list(published.data["special_tokens"]["extra"])


def build_config(published: Published, tokenizer, text: dict, image_size: int | None):
    mc = published.model_config
    vision = mc["vision_config"]
    rope = {"rope_type": "default", "rope_theta": mc.get("rope_theta", 1e6), "mrope_section": MROPE_SECTION}
    text = text_config(published, tokenizer, {"rope_parameters": rope, **text}, model_type=None)
    text.pop("model_type", None)
    layers = dict(
        depth=LAYERS,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        patch_size=vision["patch_size"],
        spatial_merge_size=vision["spatial_merge_size"],
        temporal_patch_size=vision["temporal_patch_size"],
    )
    ids = {
        key: token_id(tokenizer, token)
        for key, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    if published.model_type == "qwen2_vl":
        return Qwen2VLConfig(text_config=text, vision_config={**layers, "embed_dim": HIDDEN}, **ids)
    vision_25 = {
        **layers,
        "intermediate_size": INTERMEDIATE,
        "out_hidden_size": HIDDEN,
        "window_size": 112,
        "fullatt_block_indexes": [LAYERS - 1],
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision_25, **ids)


def build_processor(published: Published, tokenizer, image_size: int | None):
    settings = published.image_processor
    pixels = {"shortest_edge": settings["min_pixels"], "longest_edge": settings["max_pixels"]}
    images = Qwen2VLImageProcessorPil(
        size=pixels,
        patch_size=settings["patch_size"],
        merge_size=settings["merge_size"],
        temporal_patch_size=settings["temporal_patch_size"],
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
    )
    processor_class = image_only_processor_class(published.model_type)
    return processor_class(images, tokenizer, chat_template=published.chat_template)
