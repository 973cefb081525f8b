"""What every family's tiny model shares: a 2-layer, 64-wide text model of the published text model type."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerFast

from trainer.models.families.published import Published

HIDDEN, INTERMEDIATE, LAYERS, HEADS, HEAD_DIM, KV_HEADS = 64, 128, 2, 4, 16, 2


def text_config(
    published: Published, tokenizer: PreTrainedTokenizerFast, overrides: dict[str, Any], model_type: str | None = None
) -> dict[str, Any]:
    """The language model's config: the published text model type, tiny sizes, our tokenizer's ids. Every Linear
    has in_features % 64 == 0 and out_features % 32 == 0, so bitsandbytes can quantise it to 4 bits."""
    text = published.model_config.get("text_config") or {}
    kind = model_type or (text.get("model_type") if isinstance(text, dict) else None)
    config = dict(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if kind:
        config["model_type"] = kind
    return config | overrides


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or found == tokenizer.unk_token_id:
        raise ValueError(f"the tiny tokenizer has no {token!r}")
    return found


def scaled(size: int, image_size: int | None, published_size: int) -> int:
    """A published pixel size, scaled down by image_size / published_size when a smaller vision input is asked."""
    return size if image_size is None else size * image_size // published_size
