"""Tiny VLMs built offline load through the real Auto classes and train, generate and tokenize as the trainer needs.

The three fast families at the kit's small vision input; every family at its published settings: test_families.py.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, BitsAndBytesConfig
from transformers.utils import is_torchvision_available

from trainer.models.families.published import load
from trainer.models.processor import load_processor
from trainer.testing.tiny import ANSWER_WORDS, FAMILIES, KITS, SMALL_IMAGE, build_tiny_model

IMAGE_TOKENS_PER_32PX_IMAGE = {"llava": 16, "llava_next": 36, "qwen2_vl": 4}
PROJECTOR = {"llava": "multi_modal_projector", "llava_next": "multi_modal_projector", "qwen2_vl": "visual.merger"}
SYSTEM = {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family, image_size=SMALL_IMAGE) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def loaded(built, family):
    return AutoModelForImageTextToText.from_pretrained(built[family]), load_processor(built[family])


def picture(width=32, height=32, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat(question: str, images: int = 1, answer: str = "red"):
    """A system turn, a user turn with `images` images and `question`, the answer: content as typed parts, the
    form every published template reads."""
    user = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    return [
        SYSTEM,
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def encode(processor, messages, images, **template_options):
    text = processor.apply_chat_template(messages, tokenize=False, **template_options)
    return processor(text=text, images=images, return_tensors="pt")


def image_token_count(model, batch) -> int:
    return int((batch["input_ids"] == model.config.image_token_id).sum())


def image_feature_count(model, batch) -> int:
    extra = {key: batch[key] for key in ("image_sizes", "image_grid_thw") if key in batch}
    features = model.get_image_features(pixel_values=batch["pixel_values"], **extra).pooler_output
    return sum(len(per_image) for per_image in features)


def test_built_directory_loads_through_the_auto_classes(built, loaded, family):
    model, processor = loaded
    assert model.config.model_type == load(KITS[family][0]).model_type
    assert type(model).__name__.endswith("ForConditionalGeneration")
    assert processor.image_token_id == model.config.image_token_id
    tokenizer = processor.tokenizer
    assert len(tokenizer) <= model.config.text_config.vocab_size and model.config.text_config.vocab_size % 64 == 0
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert sum(parameter.numel() for parameter in model.parameters()) < 1_000_000
    assert json.loads((built[family] / "tiny_model.json").read_text())["family"] == family


@pytest.mark.parametrize("family, processor_class", [("llava", "LlavaProcessor"), ("llava_next", "LlavaNextProcessor")])
def test_llava_processors_load_with_auto_processor(built, family, processor_class):
    assert type(AutoProcessor.from_pretrained(built[family])).__name__ == processor_class


@pytest.mark.xfail(
    not is_torchvision_available(),
    raises=ImportError,
    strict=True,
    reason="transformers 5 builds the torchvision-only Qwen2VLVideoProcessor in AutoProcessor",
)
def test_qwen2_vl_processor_loads_with_auto_processor(built):
    processor = AutoProcessor.from_pretrained(built["qwen2_vl"])
    assert type(processor).__name__ == "Qwen2VLProcessor"


def test_qwen2_vl_directory_has_the_real_processor_config_and_resaves_it(built, tmp_path):
    saved = json.loads((built["qwen2_vl"] / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    load_processor(built["qwen2_vl"]).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text()) == saved


def test_every_linear_fits_bitsandbytes_4bit(loaded):
    model, _ = loaded
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert linears and all(m.in_features % 64 == 0 and m.out_features % 32 == 0 for m in linears)


def test_language_model_loads_in_4bit_and_trains(built, family):
    pytest.importorskip("bitsandbytes")
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "model.visual", "lm_head"],
    )
    model = AutoModelForImageTextToText.from_pretrained(built[family], quantization_config=quantization)
    model.train()
    assert sum(type(module).__name__ == "Linear4bit" for module in model.modules()) == 2 * 7  # layers x projections
    batch = encode(load_processor(built[family]), chat("What color is the shape?"), [picture()])
    assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)


def test_image_tokens_match_image_features(loaded, family):
    model, processor = loaded
    batch = encode(processor, chat("What color is the shape?"), [picture()])
    assert image_token_count(model, batch) == IMAGE_TOKENS_PER_32PX_IMAGE[family]
    with torch.no_grad():
        assert image_feature_count(model, batch) == IMAGE_TOKENS_PER_32PX_IMAGE[family]


def test_loss_is_finite_and_gradients_reach_projector_and_language_model(loaded, family):
    model, processor = loaded
    model.train()
    batch = encode(processor, chat("What color is the shape?"), [picture()])
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    gradients = {name: parameter.grad for name, parameter in model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in gradients.items() if PROJECTOR[family] in n)
    assert gradients["model.language_model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert gradients["lm_head.weight"].abs().sum() > 0


def test_two_images_in_one_sample(loaded, family):
    model, processor = loaded
    images = [picture(seed=1), picture(48, 24, seed=2)]
    batch = encode(processor, chat("Compare the first image with the second.", 2, "First"), images)
    assert batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        assert image_token_count(model, batch) == image_feature_count(model, batch)
        assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)


def test_generate_runs(loaded):
    model, processor = loaded
    batch = encode(processor, chat("What shape is this?")[1:2], [picture()], add_generation_prompt=True)
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < generated.shape[1] <= batch["input_ids"].shape[1] + 3


def test_the_template_and_special_tokens_are_the_published_ones(loaded, family):
    _, processor = loaded
    published = load(KITS[family][0])
    assert processor.chat_template == published.chat_template
    tokenizer = processor.tokenizer
    for key in ("bos_token", "eos_token", "pad_token"):
        assert getattr(tokenizer, key) == published.special(key), key


def test_answer_words_are_single_tokens(built, family):
    """As the templates place an answer: after a space (SentencePiece-style, one '▁' word) or a newline (byte-level)."""
    tokenizer = AutoTokenizer.from_pretrained(built[family])
    sentencepiece = load(KITS[family][0]).sentencepiece
    for word in ("red", "circle", "First", "Second", "Similar", "3", *ANSWER_WORDS):
        if sentencepiece:
            assert len(tokenizer.tokenize("ASSISTANT: " + word)) == len(tokenizer.tokenize("ASSISTANT:")) + 1, word
        else:
            assert (
                tokenizer.tokenize("\n" + word)[1:] == tokenizer.tokenize(word) and len(tokenizer.tokenize(word)) == 1
            )


def test_same_seed_gives_the_same_weights_and_another_seed_others(built, family, tmp_path):
    reference = load_file(built[family] / "model.safetensors")
    same = load_file(build_tiny_model(family, tmp_path / "same", seed=0, image_size=SMALL_IMAGE) / "model.safetensors")
    other = load_file(
        build_tiny_model(family, tmp_path / "other", seed=1, image_size=SMALL_IMAGE) / "model.safetensors"
    )
    assert reference.keys() == same.keys() == other.keys()
    assert all(torch.equal(reference[name], same[name]) for name in reference)
    assert not all(torch.equal(reference[name], other[name]) for name in reference)


def test_rebuild_is_skipped_unless_arguments_change_or_asked(tmp_path):
    def build(**options):
        """The weights file's inode: a build writes new files, a skipped one leaves them."""
        return (build_tiny_model("llava", tmp_path / "llava", **options) / "model.safetensors").stat().st_ino

    first = build()
    assert build() == first
    assert build(overwrite=True) != first
    build(image_size=64)
    assert json.loads((tmp_path / "llava" / "config.json").read_text())["vision_config"]["image_size"] == 64
    assert [path.name for path in tmp_path.iterdir()] == ["llava"]


def test_refuses_to_replace_a_directory_that_is_not_a_tiny_model(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_model("llava", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny_model("blip", tmp_path / "x")
