"""Mllama's cross-attention layers leave the tokens that see no image as they are, as in Meta's reference.

In transformers (5.24; huggingface/transformers#39379) `MllamaCrossAttentionDecoderLayer` applies
`full_text_row_masked_out_mask` to its MLP output only: a token whose cross-attention mask row is all zero (one
before the first `<|image|>`, or in a row without images) still attends uniformly to its batch row's image
features and adds `tanh(cross_attn_attn_gate)` times that to its hidden state. Meta's reference implementation
(and vLLM's, SGLang's) masks the attention output too, so such a token passes the layer unchanged — what a text
gets alone, whose batch skips the cross-attention layers. Without that, a text-only sample's loss depends on
whether its micro-batch holds images, and the blank image (`trainer.batches.blank_image`) would change loss and
gradients.
"""

from __future__ import annotations

import torch
from transformers.models.mllama.modeling_mllama import MllamaCrossAttentionDecoderLayer


def mask_image_free_rows(model: torch.nn.Module) -> torch.nn.Module:
    """`model`'s Mllama cross-attention layers (none in other families) pass the tokens that see no image through
    unchanged: a forward hook on each, outside the layer's forward, so gradient checkpointing is untouched."""
    for module in model.modules():
        if isinstance(module, MllamaCrossAttentionDecoderLayer) and not getattr(module, "masks_image_free_rows", 0):
            module.register_forward_hook(keep_image_free_rows, with_kwargs=True)
            module.masks_image_free_rows = True
    return model


def keep_image_free_rows(layer, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    rows = kwargs.get("full_text_row_masked_out_mask")  # (batch, 1, tokens, 1): 0 where a token sees no image
    if rows is None:
        return output
    hidden_states = args[0] if args else kwargs["hidden_states"]
    return torch.where(rows[:, 0].bool(), output, hidden_states)
