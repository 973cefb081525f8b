"""Tiny random-weight vision-language models that stand in for real checkpoints, built offline.

`build_tiny_model(family, out)` writes what `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` (or `trainer.models.processor.load_processor`) load like a hub
checkpoint. Each family is built from its own config and processor classes with what its real
checkpoint publishes (`trainer/models/families/published/`): the chat template as published (most have no
`{% generation %}` markers), its special tokens, its tokenizer's kind (SentencePiece-style or
byte-level), its processor settings (image size, LLaVA-NeXT's grid pinpoints, Qwen2-VL's
min/max pixels, ...). What differs from the real checkpoint: random weights, 2 layers of width 64,
a 1000-token BPE trained here on a built-in corpus (each answer word one token), the head scaled
(see `build_model`), and, only when `image_size` is given, a vision input scaled down to
`image_size` pixels (pinpoints with it) for fast tests; the published size otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

from data_shards.synthetic.vocabulary import COLORS, SHAPES
from trainer.models.families.published import Published, load
from trainer.testing.kit import gemma, idefics3, internvl, llava, mllama, qwen
from trainer.testing.kit.tokenizer import build_tokenizer

# family name → (published record, kit module)
KITS: dict[str, tuple[str, ModuleType]] = {
    "llava": ("llava-1.5-7b-hf", llava),
    "llava_next": ("llava-v1.6-mistral-7b-hf", llava),
    "llava_next_vicuna": ("llava-v1.6-vicuna-7b-hf", llava),
    "llava_onevision": ("llava-onevision-qwen2-0.5b-ov-hf", llava),
    "qwen2_vl": ("qwen2-vl-2b-instruct", qwen),
    "qwen2_5_vl": ("qwen2.5-vl-7b-instruct", qwen),
    "idefics3": ("smolvlm-256m-instruct", idefics3),
    "internvl": ("internvl3-1b-hf", internvl),
    "mllama": ("llama-3.2-11b-vision-instruct", mllama),
    "gemma3": ("gemma-3-4b-it", gemma),
    "paligemma": ("paligemma-3b-mix-224", gemma),
}
FAMILIES = ("llava", "llava_next", "qwen2_vl")  # the three the fast tests cover; every kit family: KITS
SMALL_IMAGE = 56  # 4 × 14-pixel patches: fast tests' vision input, where the family's size is fixed
MARKER = "tiny_model.json"
KIT_VERSION = 4  # bump when what is built changes, so that directories built before are rebuilt
LM_HEAD_SCALE = 10.0

ANSWER_WORDS = (
    *COLORS,
    *SHAPES,
    "First",
    "Second",
    "Similar",
    "yes",
    "no",
    "none",
    "one",
    "two",
    "three",
    *"0123456789",
)
QUESTIONS = (
    "What color is the shape?",
    "What shape is this?",
    "Describe this image.",
    "What is shown in this image?",
    "Compare the first image with the second. Answer First, Second or Similar.",
    "Which objects are in the image?",
    "How many shapes are there?",
    "Are these two images the same?",
    "Which color do you get by mixing blue and yellow?",
    "You are a helpful assistant.",
)
GENERIC_ENGLISH = (
    "USER: ASSISTANT: system user assistant",
    "The quick brown fox jumps over the lazy dog. A picture shows a small object near the centre of a "
    "white or light grey background. There is one thing on the left and another on the right, above and "
    "below, inside and outside. I think the answer is clear because we can see it. Please look at the "
    "image again and tell me what you see, then count the objects and name their colours and shapes.",
    "It was a good day, and they were happy to have been there with their friends for a long time. "
    "She said that he would come back later, but nobody knew when. We should write down every number, "
    "from zero to nine, and check each one twice before the end of the week.",
    "Models learn from data: they read many examples, make a guess, measure the error and change their "
    "weights a little. After enough steps the guesses become better. Training, testing and evaluation "
    "use different parts of the data, so that the result tells us how well the model works on new input.",
    "Large and small, old and new, hot and cold, fast and slow, early and late, high and low, open and "
    "closed, first and last, full and empty, right and wrong, easy and hard, black and brown and pink.",
    "Could you explain why the sky looks blue during the day? Sunlight is scattered by the air, and short "
    "waves are scattered more than long ones. At sunset the light travels further, so we see warm colours.",
)

TEMPLATE_WORDS = (
    "USER: ASSISTANT: User: Assistant: system user assistant model [INST] [/INST] <<SYS>> <</SYS>> "
    "Picture Image You are a helpful assistant."
)


def build_tiny_model(
    family: str,
    out: Path,
    *,
    seed: int = 0,
    image_size: int | None = None,
    overwrite: bool = False,
    text: dict | None = None,
    vision: dict | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Writes a tiny random `family` model with its processor to `out` (same seed, same weights); returns `out`.

    `image_size` scales the vision input down (None: the published size). `text` overrides the language model's
    config (e.g. a wider `hidden_size`, with matching `intermediate_size`, `num_attention_heads` and `head_dim`),
    for benchmarks on a larger model; `vision` updates the vision config alike (`trainer.testing.full_size` gives
    both for a published checkpoint's real sizes), and `dtype`/`device` say where the weights are drawn and in
    what they are stored (bf16 on a GPU for 7B shapes). Does nothing when `out` already holds one built with the
    same arguments, unless `overwrite`.
    """
    if family not in KITS:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(KITS)}")
    out = Path(out)
    published, kit = load(KITS[family][0]), KITS[family][1]
    arguments = {
        "family": family,
        "published": published.name,
        "seed": seed,
        "image_size": image_size,
        "kit_version": KIT_VERSION,
        **({"text": text} if text else {}),
        **({"vision": vision} if vision else {}),
        **({"dtype": dtype} if dtype != "float32" else {}),
    }
    marker = out / MARKER
    if marker.exists() and json.loads(marker.read_text()) == arguments and not overwrite:
        return out
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise FileExistsError(f"{out} holds files that are not a tiny model; not replacing them")
    staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = build_tokenizer(published, corpus(), kit.extra_specials(published))
    processor = kit.build_processor(published, tokenizer, image_size)
    config = kit.build_config(published, tokenizer, text or {}, image_size)
    if vision:
        config.vision_config.update(vision)
    model = build_model(config, tokenizer, published, seed, getattr(torch, dtype), device)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / MARKER).write_text(json.dumps(arguments))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def build_model(
    config,
    tokenizer: PreTrainedTokenizerFast,
    published: Published,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    with torch.no_grad():
        # At width 64 with the default init (std 0.02) the logits stay within about ±1, so a frozen head
        # cannot express a confident answer and LoRA training stalls near log(vocab); a trained
        # checkpoint's head has that range, so give the random one a comparable scale.
        model.get_output_embeddings().weight.mul_(LM_HEAD_SCALE)
    model.generation_config.update(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_of_turn_ids(tokenizer, published),
    )
    return model


def end_of_turn_ids(tokenizer: PreTrainedTokenizerFast, published: Published) -> list[int] | int:
    """Generation stops at the family's end-of-turn token and at eos (Qwen2-VL publishes both as eos ids)."""
    tokens = [token for token in (published.data.get("end_of_turn"), tokenizer.eos_token) if token]
    ids = list(dict.fromkeys(tokenizer.convert_tokens_to_ids(tokens)))
    return ids[0] if len(ids) == 1 else ids


def corpus() -> list[str]:
    """Our synthetic datasets' questions and answers plus some English; answer words often enough to merge whole."""
    scenes = [
        f"a {color} {shape} on a {background} background"
        for color in COLORS
        for shape in SHAPES
        for background in ("white", "light grey")
    ]
    counting = [f"How many {shape} objects are there? Where is the {shape}?" for shape in SHAPES]
    boxes = [f"[0.{i}{j}, 0.{j}{i}, 0.{i}5, 0.9{j}]" for i in range(10) for j in range(10)]
    answers = [" ".join(ANSWER_WORDS), "\n".join(ANSWER_WORDS), ", ".join(ANSWER_WORDS)]
    return [*QUESTIONS, *scenes, *counting, *boxes, *GENERIC_ENGLISH, TEMPLATE_WORDS] * 10 + answers * 200
