"""A folder of images with same-named `.txt` captions (`x.jpg` + `x.txt`; jpg/png/webp), searched recursively."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_shards.records import RawSample, Reject
from data_shards.sample import Turn
from data_shards.sources.common import SourceOptions, is_image_file

NAME = "captions"


def detect_folder(path: Path) -> bool:
    return any(is_image_file(p) for p in path.rglob("*")) and any(path.rglob("*.txt"))


def default_image_root(path: Path) -> Path:
    return path


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    images = sorted(p for p in path.rglob("*") if is_image_file(p))
    stems_with_images = {p.with_suffix("") for p in images}
    for image in images:
        relative = image.relative_to(path)
        key = relative.with_suffix("").as_posix()
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            yield Reject(key, "missing_caption", f"no {caption_file.name} beside {relative}", str(relative))
            continue
        caption = caption_file.read_text(encoding="utf-8-sig", errors="replace").strip()
        turns = [Turn("user", options.caption_prompt), Turn("assistant", caption)]
        yield RawSample(key, [image.relative_to(image_root).as_posix()], turns, str(relative), source=NAME)
    for caption_file in sorted(path.rglob("*.txt")):
        if caption_file.with_suffix("") not in stems_with_images:
            relative = caption_file.relative_to(path)
            yield Reject(
                relative.with_suffix("").as_posix(), "missing_image", f"no image for {relative}", str(relative)
            )
