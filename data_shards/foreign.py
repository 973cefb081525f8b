"""WebDataset tars written by others (img2dataset's `{key}.jpg` + `{key}.txt` + `{key}.json`), read in place.

`python -m data_shards index DIR` writes an index whose `layout` names the members holding the image and
the caption (`Fields`); at read time `to_sample` turns one sample's members into a `Sample`, the caption
becoming the `captions` source's question and answer.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from functools import partial
from typing import Any

from data_shards.sample import EXTENSION_FORMATS, ImageData, Sample, SchemaError, Turn, from_members
from data_shards.sources.common import SourceOptions
from data_shards.tario import KEY

LAYOUT_KIND = "webdataset"
FIELD_NAMES = ("image", "caption")
DEFAULT_FIELDS = {"image": ("jpg", "jpeg", "png", "webp"), "caption": ("txt",)}


@dataclass(frozen=True)
class Fields:
    """Which member extensions hold the image and the caption (the first one present wins)."""

    image: tuple[str, ...] = DEFAULT_FIELDS["image"]
    caption: tuple[str, ...] = DEFAULT_FIELDS["caption"]
    prompt: str = SourceOptions.caption_prompt

    def __post_init__(self) -> None:
        unknown = [ext for ext in self.image if ext not in EXTENSION_FORMATS]
        if unknown:
            raise ValueError(f"--fields: image extensions must be among {sorted(EXTENSION_FORMATS)}, got {unknown}")

    @classmethod
    def parse(cls, text: str | None, prompt: str = SourceOptions.caption_prompt) -> Fields:
        """`caption=txt,image=jpg` (a name may repeat: `image=jpg,image=png`); unnamed fields keep their default."""
        if not text:
            return cls(prompt=prompt)
        chosen: dict[str, list[str]] = {}
        for item in text.split(","):
            name, _, ext = item.strip().partition("=")
            if name not in FIELD_NAMES or not ext.strip(". "):
                raise ValueError(f"--fields: {item.strip()!r} is not NAME=EXTENSION with NAME one of {FIELD_NAMES}")
            chosen.setdefault(name, []).append(ext.strip(". ").lower())
        return cls(**{name: tuple(exts) for name, exts in chosen.items()}, prompt=prompt)

    def to_layout(self) -> dict[str, Any]:
        return {"kind": LAYOUT_KIND, "image": list(self.image), "caption": list(self.caption), "prompt": self.prompt}

    @classmethod
    def from_layout(cls, layout: dict[str, Any]) -> Fields:
        return cls(tuple(layout["image"]), tuple(layout["caption"]), layout["prompt"])

    def image_member(self, members: Container[str]) -> str | None:
        return next((ext for ext in self.image if ext in members), None)

    def caption_member(self, members: Container[str]) -> str | None:
        return next((ext for ext in self.caption if ext in members), None)


def caption_text(data: bytes) -> str:
    return data.decode("utf-8-sig", errors="replace").strip()


def to_sample(members: dict[str, bytes], fields: Fields) -> Sample:
    """A caption sample from one foreign sample's members (suffix → bytes, with `__key__`)."""
    key = members.get(KEY, b"?").decode()
    image, caption = fields.image_member(members), fields.caption_member(members)
    if image is None or caption is None:
        raise SchemaError(f"sample {key!r} lacks its image or caption member (members: {sorted(members)})")
    turns = [Turn("user", fields.prompt), Turn("assistant", caption_text(members[caption]))]
    return Sample(key, [ImageData(members[image], EXTENSION_FORMATS[image])], turns, source=LAYOUT_KIND)


def is_foreign(index: dict[str, Any]) -> bool:
    return index.get("layout", {}).get("kind") == LAYOUT_KIND


def sample_reader(index: dict[str, Any]) -> Callable[[dict[str, bytes]], Sample]:
    """How the stream turns members into a Sample: our schema, or the index's foreign layout."""
    if not is_foreign(index):
        return from_members
    fields = Fields.from_layout(index["layout"])
    return partial(to_sample, fields=fields)  # picklable, for spawned DataLoader workers
