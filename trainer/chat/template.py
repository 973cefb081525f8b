"""Where a model's chat template comes from, and rendering it as text.

Published templates are used as they are: answer spans come from rendering prefixes of the
conversation (`trainer.chat.answers`), never from `{% generation %}` markers, which most lack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers.utils.chat_template_utils import render_jinja_template

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "tokenizer_config.json")


def template_source(model_path: str | Path) -> str:
    """The file of `model_path` that holds its chat template (the first of TEMPLATE_FILES that does), or the
    model path itself when none does (a hub id, or a template set in code)."""
    folder = Path(model_path)
    for name in TEMPLATE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".jinja") or json.loads(path.read_text() or "{}").get("chat_template"):
            return str(path)
    return str(model_path)


def use_chat_template(processor, model_path: str | Path, template_file: str | Path | None) -> str:
    """Puts `template_file`'s template on the processor when one is given; returns where the template comes from."""
    if not template_file:
        return template_source(model_path)
    template = Path(template_file).read_text()
    processor.chat_template = template
    processor.tokenizer.chat_template = template
    return str(template_file)


class ChatRenderer:
    """Renders messages to text with a processor's chat template; remembers where the template came from.

    Messages come with typed content parts, the form processor templates read. Some templates read a system
    message's content only as a string (Llama 3.2 Vision writes a list of parts as its Python text): for those,
    found by rendering a probe once, system content is passed as its text."""

    def __init__(self, processor, source: str):
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"{source}: the model publishes no chat template")
        self.processor = processor
        self.source = source
        self.system_as_text = self.reads_system_text_only()

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        """As `processor.apply_chat_template(messages, tokenize=False)` renders them, without its per-call parse of
        the template (a third of the collate time)."""
        if self.system_as_text:
            messages = [system_text(message) if message["role"] == "system" else message for message in messages]
        (text,), _ = render_jinja_template(
            [messages],
            chat_template=self.processor.chat_template,
            add_generation_prompt=generation_prompt,
            **self.processor.tokenizer.special_tokens_map,
        )
        return text

    def reads_system_text_only(self) -> bool:
        probe = "PROBE-SYSTEM-TEXT"
        chat = [
            {"role": "system", "content": [{"type": "text", "text": probe}]},
            {"role": "user", "content": [{"type": "text", "text": "Q"}]},
        ]
        try:
            rendered = self.processor.apply_chat_template(chat, tokenize=False)
        except Exception:  # noqa: BLE001 - a template may refuse list content outright; the string form is tried then
            return True
        return probe not in rendered or "'type'" in rendered

    def image_text(self) -> str:
        """What the template writes for one image: the difference between a user turn with an image and the same
        turn without it; where it could stand at several places, one holding the processor's image placeholder (a
        character diff reads PaliGemma's '<image><bos>' as '<' + 'image><' + 'bos>')."""
        text = {"type": "text", "text": "Q"}
        with_image = self.render([{"role": "user", "content": [{"type": "image"}, text]}])
        without = self.render([{"role": "user", "content": [text]}])
        start = 0
        while start < len(without) and with_image[start] == without[start]:
            start += 1
        end = 0
        while end < len(without) - start and with_image[-1 - end] == without[-1 - end]:
            end += 1
        image = with_image[start : len(with_image) - end]
        if not image:
            raise ValueError(f"{self.source}: the chat template writes nothing for an image part")
        token = getattr(self.processor, "image_token", None)
        if token and token not in image:
            image = next((text for text in insertions(with_image, without, start) if token in text), image)
        return image


def insertions(longer: str, shorter: str, latest: int) -> list[str]:
    """The texts that, inserted into `shorter` at `latest` or before, give `longer`; the latest place first."""
    size = len(longer) - len(shorter)
    return [
        longer[place : place + size]
        for place in range(latest, -1, -1)
        if size > 0 and longer[:place] == shorter[:place] and longer[place + size :] == shorter[place:]
    ]


def system_text(message: dict[str, Any]) -> dict[str, Any]:
    content = message["content"]
    text = content if isinstance(content, str) else "".join(p["text"] for p in content if p.get("type") == "text")
    return {**message, "content": text}
