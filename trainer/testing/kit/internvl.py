"""InternVL (InternVL3-hf): an InternViT tower, pixel shuffle by downsample_ratio, an MLP projector to a Qwen2
language model; each image cut into up to max_patches tiles plus a thumbnail (crop_to_patches), each tile
image_seq_length `<IMG_CONTEXT>` tokens, the image's tiles between `<img>` and `</img>`."""

from __future__ import annotations

from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLVisionConfig

from trainer.models.families.published import Published
from trainer.models.processor import image_only_processor_class
from trainer.testing.kit.common import HEADS, HIDDEN, INTERMEDIATE, LAYERS, text_config, token_id

# InternVLProcessor finds its tokens by these names on the tokenizer (the conversion script's extra_special_tokens)
NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def extra_specials(published: Published) -> list[str]:
    """The published extra tokens (the template's `<video>` placeholder among them, as the processor names it)."""
    listed = [token for token in published.data["special_tokens"]["extra"] if " " not in token]
    return list(dict.fromkeys([*listed, *NAMED_TOKENS.values()]))


def tile_side(published: Published, image_size: int | None) -> int:
    """The vision input: the published tile side, or `image_size` rounded down to whole pixel-shuffled tokens
    (a multiple of patch_size / downsample_ratio, at least one)."""
    mc = published.model_config
    if image_size is None:
        return mc["vision_config.image_size"][0]
    unit = round(mc["vision_config.patch_size"][0] / mc["downsample_ratio"])
    return max(unit, image_size // unit * unit)


def image_seq_length(published: Published, side: int) -> int:
    mc = published.model_config
    return round((side // mc["vision_config.patch_size"][0] * mc["downsample_ratio"]) ** 2)


def build_config(published: Published, tokenizer, text: dict, image_size: int | None):
    mc = published.model_config
    side = tile_side(published, image_size)
    vision = InternVLVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=[side, side],
        patch_size=mc["vision_config.patch_size"],
    )
    text = text_config(published, tokenizer, text, model_type=mc["text_config.model_type"])
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_seq_length=image_seq_length(published, side),
        image_token_id=token_id(tokenizer, published.special("image_token")),
        downsample_ratio=mc["downsample_ratio"],
        vision_feature_layer=mc["vision_feature_layer"],
        vision_feature_select_strategy=mc["vision_feature_select_strategy"],
        projector_hidden_act=mc["projector_hidden_act"],
    )


def build_processor(published: Published, tokenizer, image_size: int | None):
    """GotOcr2's image processor as the conversion script writes it; the processor crops to patches at call time
    (its images_kwargs), between the image processor's min_patches and max_patches."""
    settings = published.image_processor
    side = tile_side(published, image_size)
    images = GotOcr2ImageProcessorPil(
        size={"height": side, "width": side},
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
        do_convert_rgb=settings["do_convert_rgb"],
    )
    # private, but the only way to add named special tokens after construction; they are saved with the tokenizer
    tokenizer._set_model_specific_special_tokens(NAMED_TOKENS)
    processor_class = image_only_processor_class(published.model_type)
    return processor_class(
        images, tokenizer, chat_template=published.chat_template, image_seq_length=image_seq_length(published, side)
    )
