"""The one record that crosses from `data_shards` into the trainer.

A `Sample` holds encoded images (in conversation order) and the conversation turns whose text
marks each image with an `<image>` placeholder. In a shard it is stored as WebDataset members
`{tar_key}.json` and `{tar_key}.{i}.{ext}`; the schema version travels in the JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

SCHEMA_VERSION = 1
IMAGE_TOKEN = "<image>"
ROLES = ("system", "user", "assistant")
FORMAT_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
EXTENSION_FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}


class SchemaError(ValueError):
    """A stored sample does not match the schema this code reads."""


@dataclass(frozen=True)
class Turn:
    role: str
    text: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SchemaError(f"turn role {self.role!r} is not one of {ROLES}")


@dataclass
class ImageData:
    """Encoded image bytes; `decode()` gives an RGB PIL image (cached once decoded)."""

    data: bytes
    format: str
    _pil: Any = field(default=None, repr=False, compare=False)

    def decode(self):
        if self._pil is None:
            image = Image.open(io.BytesIO(self.data))
            image.load()
            self._pil = image if image.mode == "RGB" else image.convert("RGB")
        return self._pil

    @property
    def extension(self) -> str:
        return FORMAT_EXTENSIONS[self.format]


@dataclass
class Sample:
    key: str
    images: list[ImageData]
    turns: list[Turn]
    label: str | None = None
    group: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def placeholder_count(self) -> int:
        return sum(turn.text.count(IMAGE_TOKEN) for turn in self.turns)

    def answers(self) -> list[str]:
        return [turn.text for turn in self.turns if turn.role == "assistant"]

    def metadata(self) -> dict[str, Any]:
        """The JSON member of the sample (everything but the image bytes)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "key": self.key,
            "turns": [{"role": t.role, "text": t.text} for t in self.turns],
            "images": [image.format for image in self.images],
            "label": self.label,
            "group": self.group,
            "source": self.source,
            "extra": self.extra,
        }

    def content_hash(self) -> str:
        """Identity of the content regardless of key: equal hashes mean an exact duplicate."""
        digest = hashlib.sha256()
        meta = self.metadata()
        del meta["key"]
        digest.update(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
        for image in self.images:
            digest.update(hashlib.sha256(image.data).digest())
        return digest.hexdigest()


def to_members(sample: Sample, tar_key: str) -> list[tuple[str, bytes]]:
    """Tar members of a sample, in a fixed order (JSON first, then images by position)."""
    if "." in tar_key or "/" in tar_key:
        raise ValueError(f"tar key {tar_key!r} must not contain '.' or '/'")
    meta = json.dumps(sample.metadata(), ensure_ascii=False, sort_keys=True).encode()
    members = [(f"{tar_key}.json", meta)]
    for position, image in enumerate(sample.images):
        members.append((f"{tar_key}.{position}.{image.extension}", image.data))
    return members


def from_members(members: dict[str, bytes]) -> Sample:
    """Rebuild a Sample from its members keyed by suffix (`json`, `0.jpg`, `1.png`, ...)."""
    if "json" not in members:
        raise SchemaError(f"sample has no json member (members: {sorted(members)})")
    meta = json.loads(members["json"])
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"sample {meta.get('key')!r} has schema {version}, this code reads {SCHEMA_VERSION}")
    images = []
    for position, image_format in enumerate(meta["images"]):
        suffix = f"{position}.{FORMAT_EXTENSIONS[image_format]}"
        if suffix not in members:
            raise SchemaError(f"sample {meta['key']!r} lacks image member {suffix}")
        images.append(ImageData(members[suffix], image_format))
    return Sample(
        key=meta["key"],
        images=images,
        turns=[Turn(t["role"], t["text"]) for t in meta["turns"]],
        label=meta.get("label"),
        group=meta.get("group"),
        source=meta.get("source"),
        extra=meta.get("extra") or {},
    )
