"""Where a model's chat template comes from, and rendering it as text.

Published templates are used as they are: answer spans come from rendering prefixes of the
conversation (`trainer.chat.answers`), never from `{% generation %}` markers, which most lack.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "tokenizer_config.json")


def template_source(model_path: str | Path) -> str:
    """The file of `model_path` that holds its chat template (the first of TEMPLATE_FILES that does), or the
    model path itself when none does (a hub id, or a template set in code)."""
    folder = Path(model_path)
    for name in TEMPLATE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".jinja") or "chat_template" in json.loads(path.read_text() or "{}"):
            return str(path)
    return str(model_path)


class ChatRenderer:
    """Renders messages to text with a processor's chat template; remembers where the template came from."""

    def __init__(self, processor, source: str):
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"{source}: the model publishes no chat template")
        self.processor = processor
        self.source = source

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def image_text(self) -> str:
        """What the template writes for one image: the difference between a user turn with an image and the same
        turn without it."""
        text = {"type": "text", "text": "Q"}
        with_image = self.render([{"role": "user", "content": [{"type": "image"}, text]}])
        without = self.render([{"role": "user", "content": [text]}])
        start = 0
        while start < len(without) and with_image[start] == without[start]:
            start += 1
        end = 0
        while end < len(without) - start and with_image[-1 - end] == without[-1 - end]:
            end += 1
        image = with_image[start:len(with_image) - end]
        if not image:
            raise ValueError(f"{self.source}: the chat template writes nothing for an image part")
        return image
