"""What real checkpoints publish — chat template, special tokens, tokenizer kind, processor and model settings —
kept as data in `published/*.json`, each naming its sources (see published/README.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).parent / "published"


@dataclass(frozen=True)
class Published:
    name: str
    data: dict[str, Any]

    @property
    def model_type(self) -> str:
        return self.data["model_type"]

    @property
    def chat_template(self) -> str | None:
        return self.data["chat_template"]

    def special(self, key: str) -> str | None:
        """A special token as published (`bos_token`, `eos_token`, `pad_token`, `unk_token`, `image_token`, ...)."""
        return self.data["special_tokens"].get(key)

    @property
    def sentencepiece(self) -> bool:
        """Whether the tokenizer is SentencePiece-style (spaces as '▁', Llama/Mistral/Gemma) rather than byte-level."""
        return self.data["tokenizer"]["type"].startswith("sentencepiece")

    @property
    def adds_bos(self) -> bool:
        return bool(self.data["tokenizer"].get("add_bos_token")) and self.special("bos_token") is not None

    @property
    def image_processor(self) -> dict[str, Any]:
        return self.data["image_processor"] or {}

    @property
    def processor(self) -> dict[str, Any]:
        return self.data["processor"] or {}

    @property
    def model_config(self) -> dict[str, Any]:
        return self.data["model_config"] or {}


@cache
def load(name: str) -> Published:
    path = FOLDER / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no published record {name!r}; expected one of {names()}")
    return Published(name, json.loads(path.read_text()))


def names() -> list[str]:
    return sorted(path.stem for path in FOLDER.glob("*.json"))
