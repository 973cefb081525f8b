"""Idefics3 (SmolVLM): a SigLIP tower over square tiles, a pixel-shuffle connector (scale_factor² patches to one
token), images split into rows × columns of tiles plus a global view, each tile `<row_r_col_c>` + image_seq_len
`<image>` tokens between `<fake_token_around_image>` markers."""

from __future__ import annotations

from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig

from trainer.models.families.published import Published
from trainer.testing.kit.common import HEADS, HIDDEN, INTERMEDIATE, LAYERS, scaled, text_config, token_id

GRID = 6  # the processor's <row_r_col_c> tokens: r, c in 1..6
FRAMING = ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>")


def extra_specials(published: Published) -> list[str]:
    """The image token, the tile markers and the end of utterance; not the 88 unused reserved tokens."""
    rows = [f"<row_{r}_col_{c}>" for r in range(1, GRID + 1) for c in range(1, GRID + 1)]
    return [published.special("image_token"), *FRAMING, *rows]


def tile_side(published: Published, image_size: int | None) -> int:
    """The vision input: the published tile, or `image_size` rounded down to whole connector tokens (a multiple of
    patch_size × scale_factor, at least one)."""
    mc = published.model_config
    if image_size is None:
        return mc["vision_config.image_size"]
    unit = mc["vision_config.patch_size"] * mc["scale_factor"]
    return max(unit, image_size // unit * unit)


def image_seq_len(published: Published, side: int) -> int:
    mc = published.model_config
    return (side // mc["vision_config.patch_size"]) ** 2 // mc["scale_factor"] ** 2


def build_config(published: Published, tokenizer, text: dict, image_size: int | None):
    mc = published.model_config
    vision = Idefics3VisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=tile_side(published, image_size),
        patch_size=mc["vision_config.patch_size"],
    )
    return Idefics3Config(
        text_config=text_config(published, tokenizer, text, model_type=mc["text_config.model_type"]),
        vision_config=vision,
        scale_factor=mc["scale_factor"],
        image_token_id=token_id(tokenizer, published.special("image_token")),
        pad_token_id=tokenizer.pad_token_id,
    )


def build_processor(published: Published, tokenizer, image_size: int | None):
    """The published tiling (longest edge resized to `size`, split into `max_image_size` tiles), scaled with the
    tile when a smaller vision input is asked."""
    settings = published.image_processor
    tile, published_tile = tile_side(published, image_size), published.model_config["vision_config.image_size"]
    images = Idefics3ImageProcessorPil(
        do_image_splitting=settings["do_image_splitting"],
        do_pad=settings["do_pad"],
        resample=settings["resample"],
        size={"longest_edge": scaled(settings["size"]["longest_edge"], tile, published_tile)},
        max_image_size={"longest_edge": tile},
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
    )
    return Idefics3Processor(
        images, tokenizer, image_seq_len=image_seq_len(published, tile), chat_template=published.chat_template
    )
