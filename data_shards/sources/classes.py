"""Class-per-folder image sets (`root/<class>/*.jpg`, oxford_flowers102-style) → templated question/answer.

Class display names come from the folder names, or from `class_names`: a JSON object
`{folder: name}` or a text file with one name per line in folder order (numeric folders sort numerically).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import Turn
from data_shards.sources.common import SourceOptions, is_image_file, read_text

NAME = "classes"


def detect_folder(path: Path) -> bool:
    folders = [p for p in path.iterdir() if p.is_dir()]
    return (
        bool(folders)
        and all(not is_image_file(p) for p in path.iterdir())
        and any(is_image_file(f) for folder in folders for f in folder.iterdir())
    )


def default_image_root(path: Path) -> Path:
    return path


def class_folders(path: Path) -> list[Path]:
    folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if all(p.name.isdigit() for p in folders):
        return sorted(folders, key=lambda p: int(p.name))
    return sorted(folders, key=lambda p: p.name)


def display_names(folders: list[Path], names_file: Path | None) -> dict[str, str]:
    names = {folder.name: folder.name.replace("_", " ") for folder in folders}
    if names_file is None:
        return names
    if names_file.suffix == ".json":
        mapping = json.loads(read_text(names_file))
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise SourceError(f"{names_file}: names for folders that do not exist: {unknown[:5]}")
        names.update({folder: str(name) for folder, name in mapping.items()})
        return names
    lines = [line.strip() for line in read_text(names_file).splitlines() if line.strip()]
    if len(lines) != len(folders):
        raise SourceError(f"{names_file}: {len(lines)} names for {len(folders)} class folders")
    return {folder.name: line for folder, line in zip(folders, lines)}


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    if not path.is_dir():
        raise SourceError(f"{path}: the classes format expects a folder of class folders")
    folders = class_folders(path)
    names = display_names(folders, options.class_names)
    for folder in folders:
        name = names[folder.name]
        for image in sorted(p for p in folder.rglob("*") if is_image_file(p)):
            relative = image.relative_to(path).as_posix()
            turns = [Turn("user", options.class_question), Turn("assistant", options.class_answer.format(name=name))]
            yield RawSample(relative.rsplit(".", 1)[0], [relative], turns, relative, label=name, source=NAME)
