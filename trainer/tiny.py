"""Tiny random-weight vision-language models, built offline in the layout the real loading path reads.

`build_tiny_model(family, out)` writes what `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` load like a hub checkpoint: config, safetensors weights,
generation config, a byte-level BPE tokenizer trained here on a built-in corpus, the image processor
and the chat template. Every Linear of the language model has in_features % 64 == 0 and
out_features % 32 == 0, so bitsandbytes can quantise it to 4 bits. Without torchvision a Qwen2-VL
processor loads only through `load_processor` (see `ImageOnlyQwen2VLProcessor`).

Chat template: a message's `content` is either a string in which each `<image>` marks an image (our
samples' form; a newline right after `<image>` belongs to the placeholder) or a list of
`{"type": "image"}` / `{"type": "text", "text": ...}` parts; both render the same text. Roles:
system, user, assistant. Each assistant reply, with the end-of-turn token that closes it, lies in
`{% generation %}`, so `return_assistant_tokens_mask=True` marks exactly the tokens to train on.
  llava, llava_next: `SYSTEM USER: <image>\\nQUESTION ASSISTANT: ANSWER</s>USER: ...`
                     (the tokenizer puts `<s>` in front; the generation prompt ends in `ASSISTANT:`)
  qwen2_vl: `<|im_start|>system\\nSYSTEM<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|image_pad|>`
            `<|vision_end|>QUESTION<|im_end|>\\n<|im_start|>assistant\\nANSWER<|im_end|>\\n`
            (Qwen's default system prompt when the chat has none)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
)

from trainer.processor import ImageOnlyQwen2VLProcessor

FAMILIES = ("llava", "llava_next", "qwen2_vl")
MARKER = "tiny_model.json"
KIT_VERSION = 2  # bump when what is built changes, so that directories built before are rebuilt

HIDDEN, INTERMEDIATE, LAYERS, HEADS, HEAD_DIM = 64, 128, 2, 4, 16
CLIP_PATCH = 8
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL_PATCH, QWEN_KV_HEADS = 4, 2, 2, 2
MROPE_SECTION = [2, 3, 3]  # temporal, height, width: the HEAD_DIM // 2 rotary frequencies
VOCAB_SIZE = 1000
LM_HEAD_SCALE = 10.0
# As in the real LLaVA-1.5 and LLaVA-NeXT checkpoints: the second-to-last CLIP layer, so the last
# vision layer gets no gradient there either.
VISION_FEATURE_LAYER = -2

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "cross")
ANSWER_WORDS = (*COLORS, *SHAPES, "First", "Second", "Similar", "yes", "no", "none", "one", "two", "three",
                *"0123456789")
QUESTIONS = (
    "What color is the shape?", "What shape is this?", "Describe this image.", "What is shown in this image?",
    "Compare the first image with the second. Answer First, Second or Similar.",
    "Which objects are in the image?", "How many shapes are there?", "Are these two images the same?",
    "Which color do you get by mixing blue and yellow?", "You are a helpful assistant.",
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

LLAVA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "extra_special_tokens": ["<image>"]}
QWEN_SPECIALS = {
    "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
    "extra_special_tokens": ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}

# Sets `text`: the message's content with each image, placeholder or part, written as IMAGE.
MESSAGE_TEXT = (
    "{%- if message['content'] is string -%}"
    "{%- set text = message['content'] | replace('<image>\\n', '<image>') | replace('<image>', IMAGE) -%}"
    "{%- else -%}{%- set parts = namespace(text='') -%}{%- for part in message['content'] -%}"
    "{%- set parts.text = parts.text + (IMAGE if part['type'] == 'image' else part['text']) -%}"
    "{%- endfor -%}{%- set text = parts.text -%}{%- endif -%}"
)
LLAVA_TEMPLATE = (
    "{%- set IMAGE = '<image>\\n' -%}{%- for message in messages -%}" + MESSAGE_TEXT
    + "{%- if message['role'] == 'system' -%}{{ text + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + text + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT:' }}{% generation %}{{ ' ' + text + eos_token }}{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
QWEN_TEMPLATE = (
    "{%- set IMAGE = '<|vision_start|><|image_pad|><|vision_end|>' -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif -%}"
    "{%- for message in messages -%}" + MESSAGE_TEXT
    + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{ text + '<|im_end|>' }}{% endgeneration %}"
    "{%- else -%}{{ text + '<|im_end|>' }}{%- endif -%}{{ '\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_tiny_model(family: str, out: Path, *, seed: int = 0, image_size: int = 32, overwrite: bool = False,
                     text: dict | None = None) -> Path:
    """Writes a tiny random `family` model with its processor to `out` (same seed, same weights); returns `out`.

    `text` overrides the language model's config (e.g. a wider `hidden_size`, with matching
    `intermediate_size`, `num_attention_heads` and `head_dim`), for benchmarks on a larger model.
    Does nothing when `out` already holds one built with the same arguments, unless `overwrite`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out = Path(out)
    arguments = {"family": family, "seed": seed, "image_size": image_size, "kit_version": KIT_VERSION,
                 **({"text": text} if text else {})}
    marker = out / MARKER
    if marker.exists() and json.loads(marker.read_text()) == arguments and not overwrite:
        return out
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise FileExistsError(f"{out} holds files that are not a tiny model; not replacing them")
    staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    processor = build_processor(family, image_size)
    model = build_model(family, processor.tokenizer, seed, image_size, text or {})
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / MARKER).write_text(json.dumps(arguments))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def build_model(family: str, tokenizer: PreTrainedTokenizerFast, seed: int, image_size: int, text: dict):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(build_config(family, tokenizer, image_size, text))
    with torch.no_grad():
        # At width 64 with the default init (std 0.02) the logits stay within about ±1, so a frozen head
        # cannot express a confident answer and LoRA training stalls near log(vocab); a trained
        # checkpoint's head has that range, so give the random one a comparable scale.
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.generation_config.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def build_config(family: str, tokenizer: PreTrainedTokenizerFast, image_size: int, overrides: dict):
    text = dict(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, head_dim=HEAD_DIM, max_position_embeddings=2048,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id) | overrides
    token_id = tokenizer.convert_tokens_to_ids
    if family == "qwen2_vl":
        text.update(num_key_value_heads=QWEN_KV_HEADS,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION})
        vision = dict(depth=LAYERS, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=HEADS, patch_size=QWEN_PATCH,
                      spatial_merge_size=QWEN_MERGE, temporal_patch_size=QWEN_TEMPORAL_PATCH)
        return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=token_id("<|image_pad|>"),
                             video_token_id=token_id("<|video_pad|>"),
                             vision_start_token_id=token_id("<|vision_start|>"),
                             vision_end_token_id=token_id("<|vision_end|>"))
    vision = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, image_size=image_size, patch_size=CLIP_PATCH)
    common = dict(text_config=LlamaConfig(**text), vision_config=vision, image_token_index=token_id("<image>"),
                  image_seq_length=(image_size // CLIP_PATCH) ** 2, vision_feature_select_strategy="default",
                  vision_feature_layer=VISION_FEATURE_LAYER)
    if family == "llava":
        return LlavaConfig(**common)
    return LlavaNextConfig(**common, image_grid_pinpoints=grid_pinpoints(image_size))


def grid_pinpoints(image_size: int) -> list[list[int]]:
    """LLaVA-NeXT's anyres resolutions: 1x1, 1x2, 2x1 and 2x2 tiles of the vision tower's input size."""
    return [[image_size * rows, image_size * columns] for rows in (1, 2) for columns in (1, 2)]


def build_processor(family: str, image_size: int):
    """The family's processor, its image processor sized for `image_size` square images."""
    tokenizer = build_tokenizer(family)
    side, square = {"shortest_edge": image_size}, {"height": image_size, "width": image_size}
    clip_tokens = dict(patch_size=CLIP_PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if family == "llava":
        images = CLIPImageProcessorPil(size=side, crop_size=square)
        return LlavaProcessor(images, tokenizer, chat_template=LLAVA_TEMPLATE, **clip_tokens)
    if family == "llava_next":
        images = LlavaNextImageProcessorPil(size=side, crop_size=square,
                                            image_grid_pinpoints=grid_pinpoints(image_size))
        return LlavaNextProcessor(images, tokenizer, chat_template=LLAVA_TEMPLATE, **clip_tokens)
    pixels = {"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size}
    images = Qwen2VLImageProcessorPil(size=pixels, patch_size=QWEN_PATCH, merge_size=QWEN_MERGE,
                                      temporal_patch_size=QWEN_TEMPORAL_PATCH)
    return ImageOnlyQwen2VLProcessor(images, tokenizer, chat_template=QWEN_TEMPLATE)


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus()`: each answer word is one token, with or without a space before it."""
    specials = QWEN_SPECIALS if family == "qwen2_vl" else LLAVA_SPECIALS
    special_tokens = [token for key, token in specials.items() if key != "extra_special_tokens"]
    special_tokens += specials["extra_special_tokens"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus(), trainer=trainer)
    if "bos_token" in specials:  # Llama style: <s> in front of every text
        bos = specials["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))])
    else:  # GPT-2 / Qwen style
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=2048, **specials)


def corpus() -> list[str]:
    """Our synthetic datasets' questions and answers plus some English; answer words often enough to merge whole."""
    scenes = [f"a {color} {shape} on a {background} background"
              for color in COLORS for shape in SHAPES for background in ("white", "light grey")]
    counting = [f"How many {shape} objects are there? Where is the {shape}?" for shape in SHAPES]
    boxes = [f"[0.{i}{j}, 0.{j}{i}, 0.{i}5, 0.9{j}]" for i in range(10) for j in range(10)]
    answers = [" ".join(ANSWER_WORDS), "\n".join(ANSWER_WORDS), ", ".join(ANSWER_WORDS)]
    return [*QUESTIONS, *scenes, *counting, *boxes, *GENERIC_ENGLISH] * 10 + answers * 200
