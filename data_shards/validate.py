"""Per-sample checks: structure (answers, placeholders, paths) and images (readable, bounded).

Everything here is a pure function of one raw sample so it can run in worker processes.
Duplicate detection and unique keys need the whole dataset and live in `data_shards.dedupe`.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field, replace
from pathlib import Path

from data_shards.images import ImagePolicy, ImageRejected, PreparedImage, prepare_image
from data_shards.records import RawSample, Reject
from data_shards.sample import IMAGE_TOKEN, ImageData, Sample


@dataclass
class ImageInfo:
    """A checked image as written to the shards (`format`, size, `num_bytes`), and its source's format and mode."""

    ref: str
    source_sha256: str
    format: str
    width: int
    height: int
    num_bytes: int
    source_format: str
    source_mode: str
    changes: list[str] = field(default_factory=list)


@dataclass
class CheckedSample:
    """A raw sample that passed every per-sample check, with what was learnt about its images."""

    raw: RawSample
    images: list[ImageInfo]

    def identity(self) -> str:
        """Equal for exact duplicates: same turns, label and image contents, whatever the key."""
        body = {
            "turns": [(t.role, t.text) for t in self.raw.turns],
            "label": self.raw.label,
            "images": [image.source_sha256 for image in self.images],
        }
        return hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).hexdigest()

    def num_bytes(self) -> int:
        return sum(image.num_bytes for image in self.images)


def structure_reject(raw: RawSample) -> Reject | None:
    answers = [turn.text for turn in raw.turns if turn.role == "assistant"]
    if not answers or any(not answer.strip() for answer in answers):
        return Reject(
            raw.key, "empty_answer", "no assistant turn" if not answers else "an assistant turn is empty", raw.origin
        )
    placeholders = sum(turn.text.count(IMAGE_TOKEN) for turn in raw.turns)
    if placeholders != len(raw.image_refs):
        detail = f"{placeholders} {IMAGE_TOKEN} placeholders for {len(raw.image_refs)} images"
        return Reject(raw.key, "placeholder_mismatch", detail, raw.origin)
    return None


def root_relative(ref: str, image_root: Path) -> str | None:
    """`ref` as a normalised path relative to the image root, or None when it points outside it.

    Relative refs are relative to the root; absolute ones are accepted when they lie inside it. The test
    is textual, after normalisation (`\\` as `/`, `.` and `..` folded) of both the ref and the absolute
    root: symlinks are followed on neither side, so a symlinked dataset folder under the root stays
    allowed, and an absolute ref must name the root the way `--image-root` does.
    """
    normal = posixpath.normpath(ref.replace("\\", "/"))
    if posixpath.isabs(normal):
        root = posixpath.normpath(os.path.abspath(image_root).replace("\\", "/"))
        if posixpath.commonpath([root, normal]) != root:
            return None
        normal = posixpath.relpath(normal, root)
    if normal in (".", "..") or normal.startswith("../"):
        return None
    return normal


def resolve_refs(raw: RawSample, image_root: Path) -> RawSample | Reject:
    """The sample with every image ref made root-relative, or a `path_escapes_root` reject naming the path."""
    refs = []
    for ref in raw.image_refs:
        relative = root_relative(ref, image_root)
        if relative is None:
            detail = f"{ref!r} points outside the image root {image_root}"
            return Reject(raw.key, "path_escapes_root", detail, raw.origin)
        refs.append(relative)
    return replace(raw, image_refs=refs)


def check_sample(raw: RawSample, image_root: Path, policy: ImagePolicy) -> CheckedSample | Reject:
    reject = structure_reject(raw)
    if reject is not None:
        return reject
    raw = resolve_refs(raw, image_root)
    if isinstance(raw, Reject):
        return raw
    try:
        prepared = prepare_refs(raw.image_refs, image_root, policy)
    except ImageRejected as error:
        return Reject(raw.key, error.reason, error.detail, raw.origin)
    infos = [
        ImageInfo(
            ref, p.source_sha256, p.format, p.width, p.height, len(p.data), p.source_format, p.source_mode, p.changes
        )
        for ref, p in zip(raw.image_refs, prepared)
    ]
    return CheckedSample(raw, infos)


def prepare_refs(refs: list[str], image_root: Path, policy: ImagePolicy) -> list[PreparedImage]:
    """Prepare each distinct image once, even when a sample references it twice."""
    cache: dict[str, PreparedImage] = {}
    for ref in refs:
        if ref not in cache:
            cache[ref] = prepare_image(image_root / ref, policy)
    return [cache[ref] for ref in refs]


def materialise(checked: CheckedSample, image_root: Path, policy: ImagePolicy) -> Sample:
    """The final Sample with image bytes; fails loudly if a file changed since it was checked."""
    prepared = prepare_refs(checked.raw.image_refs, image_root, policy)
    for info, image in zip(checked.images, prepared):
        if image.source_sha256 != info.source_sha256:
            raise RuntimeError(f"{image_root / info.ref} changed while the dataset was being sharded")
    raw = checked.raw
    return Sample(
        key=raw.key,
        images=[ImageData(image.data, image.format) for image in prepared],
        turns=list(raw.turns),
        label=raw.label,
        group=raw.group,
        source=raw.source,
        extra=dict(raw.extra),
    )
