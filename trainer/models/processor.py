"""Load a model's processor; those with a torchvision-only video processor (Qwen-VL, LLaVA-OneVision,
InternVL) work on machines without torchvision too."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    InternVLProcessor,
    LlavaOnevisionProcessor,
    PaliGemmaProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)
from transformers.utils import is_torchvision_available


class ImageOnlyMixin:
    """A processor without its video processor (Qwen-VL, LLaVA-OneVision, InternVL), for machines without
    torchvision.

    There transformers 5 can neither build a Qwen2VLProcessor (its argument check looks up
    VideoProcessorMixin, exported only with torchvision) nor load one with AutoProcessor (which
    builds the torchvision-only video processor). Images need neither. It saves what the processor
    with its video processor saves, so AutoProcessor loads that where torchvision is.
    """

    setting_keys: tuple[str, ...] = ()

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def to_dict(self):
        config = super().to_dict()
        image = config["image_processor"]
        video = {key: image[key] for key in self.video_keys if key in image}
        video["video_processor_type"] = self.video_processor_type
        return {**config, "processor_class": self.published_class, "video_processor": video}


class ImageOnlyQwen2VLProcessor(ImageOnlyMixin, Qwen2VLProcessor):
    published_class, video_processor_type = "Qwen2VLProcessor", "Qwen2VLVideoProcessor"
    video_keys = ("size", "patch_size", "temporal_patch_size", "merge_size")


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyMixin, Qwen2_5_VLProcessor):
    published_class, video_processor_type = "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"
    video_keys = ImageOnlyQwen2VLProcessor.video_keys


class ImageOnlyLlavaOnevisionProcessor(ImageOnlyMixin, LlavaOnevisionProcessor):
    published_class, video_processor_type = "LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor"
    video_keys = ("size", "image_mean", "image_std")
    setting_keys = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")


class ImageOnlyInternVLProcessor(ImageOnlyMixin, InternVLProcessor):
    published_class, video_processor_type = "InternVLProcessor", "InternVLVideoProcessor"
    video_keys = ("size", "image_mean", "image_std")
    setting_keys = ("image_seq_length",)


IMAGE_ONLY = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    "llava_onevision": ImageOnlyLlavaOnevisionProcessor,
    "internvl": ImageOnlyInternVLProcessor,
}


class ChatPaliGemmaProcessor(PaliGemmaProcessor):
    """PaliGemma's processor for text that a chat template laid out (configs/templates/paligemma.jinja).

    PaliGemmaProcessor lays a bare prompt out itself: bos after the last '<image>' (after character 6 of a text
    without one), a newline at the end, and it refuses text without images. The template writes each '<image>',
    bos, the prompt's newline and the answer's eos where the processor would, so this one only expands each
    '<image>' to image_seq_length tokens, also takes text-only rows, and leaves the labels (all -100 without a
    suffix) and the suffix's token_type_ids to the collator. It saves as a PaliGemmaProcessor.
    """

    def prepare_inputs_layout(self, images=None, text=None, **kwargs):
        return ProcessorMixin.prepare_inputs_layout(self, images=images, text=text, **kwargs)

    def validate_inputs(self, images=None, text=None, **kwargs):
        ProcessorMixin.validate_inputs(self, images=images, text=text, **kwargs)

    def __call__(self, images=None, text=None, **kwargs):
        encoded = super().__call__(images=images, text=text, **kwargs)
        encoded.pop("labels", None)
        return encoded

    def to_dict(self):
        return {**super().to_dict(), "processor_class": "PaliGemmaProcessor"}


# Families whose processor lays out a bare prompt, loaded as one that takes the chat template's text as it is
TEMPLATE_LAID_OUT = {"paligemma": ChatPaliGemmaProcessor}


def image_only_processor_class(model_type: str):
    return IMAGE_ONLY[model_type]


def load_processor(path: Path):
    """`AutoProcessor.from_pretrained(path)`, or an image-only Qwen-VL processor where that cannot work; PaliGemma's
    as a ChatPaliGemmaProcessor."""
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type in TEMPLATE_LAID_OUT:
        return TEMPLATE_LAID_OUT[model_type].from_pretrained(path)
    if is_torchvision_available() or model_type not in IMAGE_ONLY:
        return AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    extra = load_processor_settings(path, model_type)
    return IMAGE_ONLY[model_type](
        AutoImageProcessor.from_pretrained(path), tokenizer, chat_template=tokenizer.chat_template, **extra
    )


def load_processor_settings(path: Path, model_type: str) -> dict:
    """The saved processor's own settings (e.g. LLaVA-OneVision's num_image_tokens) besides its parts."""
    saved = Path(path) / "processor_config.json"
    settings = json.loads(saved.read_text()) if saved.is_file() else {}
    return {key: settings[key] for key in IMAGE_ONLY[model_type].setting_keys if key in settings}
