"""Per-family rules the trainer asks by model type; everything else is found from the model's structure."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Why a family's samples cannot be packed several to a row (its attention is not causal over one text, or its
# images enter through inputs that position ids cannot restart). Families not named here pack.
PACKING_REFUSED: dict[str, str] = {
    "llava_onevision": "an image is tiled (anyres) when it is alone in its row and not when it shares it "
    "(batch_num_images), so its token count depends on the row it is packed into",
    "mllama": "its images enter through cross-attention, one image list per row (pixel_values: rows, images, tiles, "
    "...) and a cross_attention_mask (rows, tokens, images, tiles) saying which image each token sees; "
    "restarted position ids do not keep a sample's tokens from its row-mates' images",
    "internvl": "its pixel values are one entry per crop (crop_to_patches: 1 to max_patches + 1 crops per image, by "
    "the image's size) and its inputs do not say which crops belong to which image, so they cannot be "
    "reordered with the samples packed out of batch order",
    "gemma3": "its image tokens attend to each other both ways (token_type_ids), and on its sliding-window layers "
    "transformers looks that pattern up at each sample's restarted positions instead of the row's, so "
    "every sample but a row's first gets another sample's image blocks (its loss packed is not padded's)",
}

# Families whose processor cuts an image into as many tiles as its size asks (InternVL's crop_to_patches): their
# config's image_seq_length counts one tile's tokens, not an image's.
TILED: frozenset[str] = frozenset({"internvl"})


def suffix_token_types(answer_mask: torch.Tensor) -> torch.Tensor:
    """PaliGemma's prefix-LM: token_type_ids 0 (both ways) up to a row's first supervised token, 1 (causal) from it
    on, later turns' questions too, so that no prefix token attends to an answer. The processor marks a suffix
    only when given one apart (suffix=), never in a conversation rendered through the chat template."""
    return answer_mask.long().cummax(dim=1).values


# token_type_ids a family's forward needs on a training row, from its answer mask, where the processor's are not
# those (Gemma 3's mark its image tokens, as the processor gives them)
TRAINING_TOKEN_TYPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"paligemma": suffix_token_types}


def training_token_types(model_type: str | None, answer_mask: torch.Tensor) -> torch.Tensor | None:
    rule = TRAINING_TOKEN_TYPES.get(model_type or "")
    return rule(answer_mask) if rule else None


def packing_problem(model_type: str) -> str | None:
    reason = PACKING_REFUSED.get(model_type)
    return f"{model_type} cannot be packed: {reason}; set data.packing=false" if reason else None
