"""Llama-3.2-Vision (Mllama): a tiled ViT (a local then a gated global encoder over up to 4 tiles per image) whose
features enter the language model through cross-attention layers between its self-attention layers; the text holds
one `<|image|>` token per image, and `cross_attention_mask` says which tokens see which image."""

from __future__ import annotations

from transformers import MllamaConfig, MllamaImageProcessorPil, MllamaProcessor

from trainer.models.families.published import Published
from trainer.testing.kit.common import HEADS, HIDDEN, INTERMEDIATE, LAYERS, scaled, text_config, token_id

# The published 40 layers repeat (3 self-attention, 1 cross-attention, 1 self-attention): cross-attention layers at
# 3, 8, ..., 38. Scaled down to one such group: self-attention, cross-attention, self-attention.
CROSS_ATTENTION_LAYERS = [1]
GLOBAL_LAYERS = 1  # published: 32 local and 8 global encoder layers
INTERMEDIATE_LAYERS = [0]  # local layers whose outputs join the last one's (published: 5 of the 32, not the last)


def extra_specials(published: Published) -> list[str]:
    """Llama 3's named special tokens (the published ones also hold 248 reserved, unnamed ones, left out here)."""
    return list(published.data["special_tokens"]["ids"])


def tile_size(published: Published, image_size: int | None) -> int:
    published_size = published.model_config["vision_config"]["image_size"]
    return scaled(published_size, image_size, published_size)


def build_config(published: Published, tokenizer, text: dict, image_size: int | None):
    vision = published.model_config["vision_config"]
    text = text_config(published, tokenizer, text, model_type=published.model_config["text_config.model_type"])
    text.pop("head_dim")  # Mllama derives it: hidden_size // num_attention_heads
    text.update(num_hidden_layers=LAYERS + len(CROSS_ATTENTION_LAYERS), cross_attention_layers=CROSS_ATTENTION_LAYERS)
    vision_config = dict(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_global_layers=GLOBAL_LAYERS,
        attention_heads=HEADS,
        intermediate_layers_indices=INTERMEDIATE_LAYERS,
        vision_output_dim=HIDDEN * (1 + len(INTERMEDIATE_LAYERS)),
        image_size=tile_size(published, image_size),
        patch_size=vision["patch_size"],
        max_num_tiles=vision["max_num_tiles"],
        hidden_act=vision["hidden_act"],
        supported_aspect_ratios=vision["supported_aspect_ratios"],
        num_channels=vision["num_channels"],
    )
    return MllamaConfig(
        vision_config=vision_config,
        text_config=text,
        image_token_index=token_id(tokenizer, published.special("image_token")),
    )


def build_processor(published: Published, tokenizer, image_size: int | None):
    settings = published.image_processor
    side = tile_size(published, image_size)
    images = MllamaImageProcessorPil(
        size={"height": side, "width": side},
        max_image_tiles=settings["max_image_tiles"],
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
        resample=settings["resample"],
        rescale_factor=settings["rescale_factor"],
    )
    return MllamaProcessor(images, tokenizer, chat_template=published.chat_template)
