"""Load a model's processor; Qwen2-VL works on machines without torchvision too."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen2VLProcessor
from transformers.utils import is_torchvision_available


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without a video processor, for machines without torchvision.

    There transformers 5 can neither build a Qwen2VLProcessor (its argument check looks up
    VideoProcessorMixin, exported only with torchvision) nor load one with AutoProcessor (which
    builds the torchvision-only Qwen2VLVideoProcessor). Images need neither. It saves what a
    Qwen2VLProcessor with its video processor saves, so AutoProcessor loads that where torchvision is.
    """

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def to_dict(self):
        config = super().to_dict()
        image = config["image_processor"]
        video = {key: image[key] for key in ("size", "patch_size", "temporal_patch_size", "merge_size")}
        video["video_processor_type"] = "Qwen2VLVideoProcessor"
        return {**config, "processor_class": "Qwen2VLProcessor", "video_processor": video}


def load_processor(path: Path):
    """`AutoProcessor.from_pretrained(path)`, or an ImageOnlyQwen2VLProcessor where that cannot work."""
    if is_torchvision_available() or AutoConfig.from_pretrained(path).model_type != "qwen2_vl":
        return AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return ImageOnlyQwen2VLProcessor(AutoImageProcessor.from_pretrained(path), tokenizer,
                                     chat_template=tokenizer.chat_template)
