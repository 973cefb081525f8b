"""Embedded images (HF Image structs {bytes, path}, or plain bytes) → files under the image root.

The checks and the shard writer read image files, so each distinct content is written once, content-addressed, as
`embedded/<sha256[:2]>/<sha256>.<ext>` (the extension from the bytes' signature, else the struct's path), through a
temporary name and a rename so that a concurrent build never sees half a file. A struct with only a path, or a
plain string, names a file under the image root as it is.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

EMBEDDED = "embedded"
MAGIC = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


class Extractor:
    """Writes embedded image bytes under the image root, once per content."""

    def __init__(self, image_root: Path):
        self.root = image_root

    def ref(self, item: Any, where: str) -> str:
        data, path = (item.get("bytes"), item.get("path")) if isinstance(item, dict) else (item, None)
        if isinstance(data, bytes):
            return self.save(data, path)
        if isinstance(path, str) and path:
            return path
        if isinstance(item, str) and item:  # a column of paths
            return item
        raise ValueError(f"{where} has neither bytes nor a path")

    def save(self, data: bytes, name: str | None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        suffix = next((ext for magic, ext in MAGIC if data.startswith(magic)), None)
        if suffix is None:
            suffix = ".webp" if data[8:12] == b"WEBP" else PurePosixPath(name or "").suffix.lower()
            suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".bin"
        relative = f"{EMBEDDED}/{digest[:2]}/{digest}{suffix}"
        target = self.root / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            partial.write_bytes(data)
            os.replace(partial, target)
        return relative


def image_items(value: Any, column: str) -> list[Any]:
    """An image column's value as a list: null is no image, a struct one image; a null inside a list is an error."""
    if value is None:
        return []
    if isinstance(value, list):
        for position, item in enumerate(value):
            if item is None:
                raise ValueError(f"{column}[{position}] is null")
        return value
    return [value]
