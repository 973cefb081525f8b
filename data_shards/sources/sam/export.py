"""A SAM-tool export as a set of members: the files of a folder, or the members of a `.zip`.

A zip is never unpacked as a whole: JSON members are parsed in memory and only the frames a sample
refers to are written, each once, under the image root (by default a cache folder per archive in the
system temp folder, reused while the archive keeps its path, size and modification time).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_shards.records import SourceError
from data_shards.sources.common import IMAGE_EXTENSIONS


def zip_cache_folder(path: Path) -> Path:
    """The default image root of a zip: its frames are written here as samples refer to them."""
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "shardtune-zip" / f"{path.stem}-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def safe_member(name: str) -> bool:
    normal = posixpath.normpath(name)
    return not (name.endswith("/") or posixpath.isabs(normal) or normal == ".." or normal.startswith("../"))


@dataclass
class Export:
    """`files`: POSIX paths relative to `base` (the folder) or member names (the zip), sorted."""

    base: Path
    image_root: Path
    files: list[str]
    archive: zipfile.ZipFile | None = None
    by_name: dict[str, list[str]] = field(default_factory=dict)
    numbered: dict[str, dict[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Index members by base name, and numbered frames (`NNNNN.jpg`) by the name of their folder."""
        for member in self.files:
            folder, name = posixpath.split(member)
            self.by_name.setdefault(name, []).append(member)
            stem = posixpath.splitext(name)[0]
            if is_frame(member) and stem.isdigit():
                self.numbered.setdefault(posixpath.basename(folder), {}).setdefault(int(stem), member)

    def where(self, member: str) -> str:
        return f"{self.base.name}:{member}" if self.archive else member

    def read_bytes(self, member: str) -> bytes:
        return self.archive.read(member) if self.archive else (self.base / member).read_bytes()

    def load_json(self, member: str) -> Any:
        try:
            return json.loads(self.read_bytes(member).decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SourceError(f"{self.where(member)}: not valid JSON ({error})") from None

    def find(self, folder: str, file_name: str) -> str | None:
        """The member `file_name` names, relative to `folder`, else the only member with that base name."""
        joined = posixpath.normpath(posixpath.join(folder, file_name))
        if joined in self.by_name.get(posixpath.basename(joined), []):
            return joined
        matches = self.by_name.get(posixpath.basename(file_name), [])
        return matches[0] if len(matches) == 1 else None

    def image_ref(self, member: str) -> str:
        """The member as an image ref under the image root; a zip member is written there first."""
        if not self.archive:
            return Path(os.path.relpath(self.base / member, self.image_root)).as_posix()
        target = self.image_root / member
        if not target.exists() or target.stat().st_size != self.archive.getinfo(member).file_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            partial.write_bytes(self.archive.read(member))
            partial.replace(target)
        return member

    def close(self) -> None:
        if self.archive:
            self.archive.close()


def open_export(path: Path, image_root: Path) -> Export:
    """A folder, a `.zip`, or one JSON file (whose frames are looked for under the image root)."""
    if path.suffix.lower() == ".zip":
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as error:
            raise SourceError(f"{path}: not a readable zip ({error})") from None
        names = sorted(n for n in archive.namelist() if safe_member(n))
        return Export(path, image_root, names, archive)
    base = path if path.is_dir() else image_root
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    return Export(base, image_root, files)


def is_frame(member: str) -> bool:
    return posixpath.splitext(member)[1].lower() in IMAGE_EXTENSIONS
