"""A small BPE tokenizer trained here, of the published kind (SentencePiece-style or byte-level), with the
checkpoint's special tokens."""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from trainer.models.families.published import Published

VOCAB_SIZE = 1000
ROLE_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def build_tokenizer(published: Published, corpus: list[str], extra: list[str]) -> PreTrainedTokenizerFast:
    """`extra`: the special tokens the family's template and processor use besides bos/eos/pad/unk."""
    roles = {key: published.special(key) for key in ROLE_KEYS if published.special(key)}
    specials = list(dict.fromkeys([*roles.values(), *extra]))
    bpe = Tokenizer(models.BPE(unk_token=roles.get("unk_token"), byte_fallback=published.sentencepiece))
    if published.sentencepiece:  # Llama / Mistral / Gemma: spaces become '▁', one in front of the text
        bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        # a newline is a piece of its own, never merged with the word after it (Llama's and Mistral's byte
        # <0x0A>, Gemma's newline tokens), so that an answer after a newline starts a token
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split("▁", behavior="merged_with_next"), pre_tokenizers.Split("\n", behavior="isolated")]
        )
        bpe.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        alphabet = sorted({character for text in corpus for character in text.replace(" ", "▁")})
    else:  # GPT-2 / Qwen / Llama 3: bytes mapped to printable characters
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False, initial_alphabet=alphabet
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    if published.sentencepiece:
        bpe.model = with_byte_fallback(bpe, roles.get("unk_token"))
    if published.adds_bos:
        bos = roles["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    elif not published.sentencepiece:
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    others = [token for token in specials if token not in roles.values()]
    # Named model-specific tokens (Gemma 3's boi_token, eoi_token, image_token), read by name by processors
    named = published.data["tokenizer"].get("extra_special_tokens") or {}
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        model_max_length=1 << 16,
        extra_special_tokens=others,
        chat_template=published.chat_template,
        **roles,
        **named,
    )


def with_byte_fallback(bpe: Tokenizer, unk: str | None) -> models.BPE:
    """The trained model with SentencePiece's 256 byte tokens added to its vocabulary, so text in any script
    falls back to bytes instead of <unk>, as Llama's and Gemma's tokenizers do."""
    model = json.loads(bpe.to_str())["model"]
    vocab = model["vocab"]
    for value in range(256):
        vocab.setdefault(f"<0x{value:02X}>", len(vocab))
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    return models.BPE(vocab, merges, unk_token=unk, byte_fallback=True)
