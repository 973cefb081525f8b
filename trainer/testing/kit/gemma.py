"""Gemma 3 and PaliGemma: a SigLIP tower on a Gemma language model, a fixed number of tokens per image.

Gemma 3 pools the tower's patches to mm_tokens_per_image soft tokens between <start_of_image> and
<end_of_image>, which attend to each other both ways (token_type_ids 1); its text model mixes sliding-window
and global layers. PaliGemma projects every patch to one <image> token in front of the prompt and attends
both ways over image and prompt (the prefix, token_type_ids 0), causally over the answer (the suffix, 1).
"""

from __future__ import annotations

from transformers import (
    Gemma3Config,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    PaliGemmaConfig,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from trainer.models.families.published import Published
from trainer.models.processor import ChatPaliGemmaProcessor
from trainer.testing.kit.common import HEADS, HIDDEN, INTERMEDIATE, LAYERS, text_config, token_id

GLOBAL_EVERY = 6  # Gemma 3: five sliding-window layers, then one global (Gemma3TextConfig's sliding_window_pattern)


def extra_specials(published: Published) -> list[str]:
    if published.model_type == "paligemma":  # its processor adds the <locNNNN> and <segNNN> tokens itself
        return [published.special("image_token")]
    return list(published.data["special_tokens"]["extra"])


def input_size(published: Published, image_size: int | None) -> int:
    return image_size or published.model_config["vision_config"]["image_size"]


def patches_per_side(published: Published, image_size: int | None) -> int:
    return input_size(published, image_size) // published.model_config["vision_config"]["patch_size"]


def image_tokens(published: Published, image_size: int | None) -> int:
    """Tokens per image: PaliGemma's one per patch; Gemma 3's patches average-pooled by the published kernel (the
    published 64 patches a side to 16 tokens a side: 4), so a smaller input keeps the pooling and has fewer tokens."""
    side = patches_per_side(published, image_size)
    if published.model_type == "paligemma":
        return side * side
    published_side = patches_per_side(published, None)
    kernel = published_side // int(published.model_config["mm_tokens_per_image"] ** 0.5)
    return (side // kernel) ** 2


def vision_config(published: Published, image_size: int | None) -> SiglipVisionConfig:
    vision = published.model_config["vision_config"]
    return SiglipVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=input_size(published, image_size),
        patch_size=vision["patch_size"],
        vision_use_head=vision.get("vision_use_head", False),
    )


def layer_types(count: int) -> list[str]:
    """Gemma 3's pattern of sliding-window and global layers, the last layer global, so that a model shorter than
    one pattern has both kinds."""
    return [
        "full_attention" if (i + 1) % GLOBAL_EVERY == 0 or i == count - 1 else "sliding_attention" for i in range(count)
    ]


def gemma3_text(published: Published, tokenizer, text: dict) -> dict:
    """The published rotary settings (linear scaling on the global layers, a local base on the sliding ones) and
    sliding window; query_pre_attn_scalar is the published head_dim (256), so it follows the tiny head_dim."""
    mc = published.model_config["text_config"]
    rope = {
        "full_attention": {**mc["rope_scaling"], "rope_theta": mc["rope_theta"]},
        "sliding_attention": {"rope_type": "default", "rope_theta": mc["rope_local_base_freq"]},
    }
    config = text_config(
        published, tokenizer, {"rope_parameters": rope, "sliding_window": mc["sliding_window"], **text}
    )
    return {
        "layer_types": layer_types(config["num_hidden_layers"]),
        "query_pre_attn_scalar": config["head_dim"],
        **config,
    }


def build_config(published: Published, tokenizer, text: dict, image_size: int | None):
    vision = vision_config(published, image_size)
    if published.model_type == "paligemma":
        language = text_config(published, tokenizer, text)
        return PaliGemmaConfig(
            text_config=language,
            vision_config=vision,
            vocab_size=language["vocab_size"],
            projection_dim=language["hidden_size"],
            hidden_size=language["hidden_size"],
            image_token_index=token_id(tokenizer, published.special("image_token")),
        )
    ids = {
        key: token_id(tokenizer, published.special(name))
        for key, name in (
            ("image_token_index", "image_token"),
            ("boi_token_index", "boi_token"),
            ("eoi_token_index", "eoi_token"),
        )
    }
    return Gemma3Config(
        text_config=gemma3_text(published, tokenizer, text),
        vision_config=vision,
        mm_tokens_per_image=image_tokens(published, image_size),
        **ids,
    )


def build_processor(published: Published, tokenizer, image_size: int | None):
    settings, side = published.image_processor, input_size(published, image_size)
    tokens = image_tokens(published, image_size)
    images = dict(
        size={"height": side, "width": side},
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
        image_seq_length=tokens,
    )
    if published.model_type == "paligemma":
        return ChatPaliGemmaProcessor(SiglipImageProcessorPil(**images), tokenizer)
    # pan-and-scan stays off, as published (null in the preprocessor config: Gemma3Processor's default False)
    return Gemma3Processor(
        Gemma3ImageProcessorPil(**images, resample=settings["resample"]),
        tokenizer,
        chat_template=published.chat_template,
        image_seq_length=tokens,
    )
