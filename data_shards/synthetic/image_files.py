"""The image-file formats, captions, manifest and classes: image files named or foldered by what they show."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from data_shards.synthetic.drawing import Picture
from data_shards.synthetic.files import (
    BROKEN_IMAGE_REASONS,
    save_image,
    write_broken_image,
    write_json,
    write_outside_image,
    write_text,
)
from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.unusual import UNUSUAL_IMAGES, foreign_caption, write_unusual_image
from data_shards.synthetic.vocabulary import COLORS, FOREIGN_TEXTS, SHAPES

CAPTION_EXTENSIONS = (".jpg", ".png", ".webp")


class _ImageFile(NamedTuple):
    key: str
    path: Path
    text: str
    note: str


def _unusual_image_files(plan: Plan, folder_for: Callable[[Picture], Path]) -> list[_ImageFile]:
    files = []
    for kind, (_, _, note) in UNUSUAL_IMAGES.items():
        picture, key = plan.picture(), f"u_{kind}"
        path = write_unusual_image(kind, picture.image, picture.background, folder_for(picture), key)
        files.append(_ImageFile(key, path, picture.caption(), note))
    return files


def _foreign_caption_files(plan: Plan, folder: Path) -> list[_ImageFile]:
    files = []
    for language in FOREIGN_TEXTS:
        picture, key = plan.picture(), f"u_{language}"
        path = folder / f"{key}.jpg"
        save_image(picture.image, path)
        files.append(_ImageFile(key, path, foreign_caption(language, picture), f"{language} text"))
    return files


def _broken_image_files(plan: Plan, folder: Path) -> list[_ImageFile]:
    files = []
    for reason in BROKEN_IMAGE_REASONS:
        key = f"d_{reason}"
        path = write_broken_image(reason, folder, key, plan.rng, plan.image_size)
        files.append(_ImageFile(key, path, "a broken image", reason))
    return files


def _good_captioned_files(plan: Plan, folder: Path, extensions: Sequence[str]) -> list[_ImageFile]:
    files = []
    for index in range(plan.n):
        picture, key = plan.picture(), f"s{index:06d}"
        path = folder / (key + extensions[index % len(extensions)])
        save_image(picture.image, path)
        files.append(_ImageFile(key, path, picture.caption(), ""))
    return files


def _caption_defect_files(plan: Plan, folder: Path) -> list[_ImageFile]:
    """Broken images with captions, plus a good image without a caption file and one with an empty caption."""
    files = _broken_image_files(plan, folder)
    for key, reason in (("d_missing_caption", "missing_caption"), ("d_empty_answer", "empty_answer")):
        path = folder / f"{key}.jpg"
        save_image(plan.picture().image, path)
        files.append(_ImageFile(key, path, "", reason))
    return files


def _unusual_captioned_files(plan: Plan, folder: Path) -> list[_ImageFile]:
    if not plan.unusual:
        return []
    return _unusual_image_files(plan, lambda _: folder) + _foreign_caption_files(plan, folder)


def _notes(files: list[_ImageFile]) -> dict[str, str]:
    return {file.key: file.note for file in files}


def write_captions(plan: Plan) -> SyntheticDataset:
    folder = plan.root / "captions"
    good = _good_captioned_files(plan, folder, CAPTION_EXTENSIONS)
    unusual = _unusual_captioned_files(plan, folder)
    defects = _caption_defect_files(plan, folder) if plan.defects else []
    for file in good + unusual + defects:
        if file.note != "missing_caption":
            write_text(file.path.with_suffix(".txt"), file.text)
    num_records = len(good) + len(unusual) + len(defects)
    return SyntheticDataset("captions", folder, None, num_records, _notes(defects), _notes(unusual))


def _manifest_defect_entries(plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
    """Returns (manifest entries, record key -> reason); a record's key is its image file's stem."""
    files = _broken_image_files(plan, plan.images_dir)
    entries = {plan.relative(file.path): file.text for file in files}
    reasons = {file.key: file.note for file in files}
    entries["images/d_missing_image.jpg"] = "a red circle on a white background"
    entries[write_outside_image(plan.root)] = "a shape outside the image root"
    entries[plan.save(plan.picture().image, "d_empty_answer")] = ""
    reasons.update(d_missing_image="missing_image", outside="path_escapes_root", d_empty_answer="empty_answer")
    return entries, reasons


def write_manifest(plan: Plan) -> SyntheticDataset:
    good = _good_captioned_files(plan, plan.images_dir, (".jpg",))
    unusual = _unusual_captioned_files(plan, plan.images_dir)
    entries = {plan.relative(file.path): file.text for file in good + unusual}
    defect_entries, reasons = _manifest_defect_entries(plan) if plan.defects else ({}, {})
    entries.update(defect_entries)
    path = plan.root / "manifest.json"
    write_json(path, entries)
    return SyntheticDataset("manifest", path, plan.root, len(entries), reasons, _notes(unusual))


def _class_topic(task: str) -> str:
    """Classes are colours unless the task is "shape" ("mixed" has no single class per image)."""
    return "shape" if task == "shape" else "color"


def _good_class_files(plan: Plan, folder: Path) -> None:
    """n images cycling through the classes, so that every class appears once n is large enough."""
    topic = _class_topic(plan.task)
    labels = SHAPES if topic == "shape" else tuple(COLORS)
    for index in range(plan.n):
        label = labels[index % len(labels)]
        picture = plan.picture(**{topic: label})
        save_image(picture.image, folder / label / f"s{index:06d}.jpg")


def _write_class_names(plan: Plan, folder: Path) -> None:
    labels = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    write_json(plan.root / "class_names.json", {label: label for label in labels})


def write_classes(plan: Plan) -> SyntheticDataset:
    folder = plan.root / "classes"
    topic = _class_topic(plan.task)
    _good_class_files(plan, folder)
    unusual = _unusual_image_files(plan, lambda picture: folder / picture.answer(topic)) if plan.unusual else []
    first_class = SHAPES[0] if topic == "shape" else next(iter(COLORS))
    defects = _broken_image_files(plan, folder / first_class) if plan.defects else []
    if plan.class_names:
        _write_class_names(plan, folder)
    num_records = plan.n + len(unusual) + len(defects)
    return SyntheticDataset("classes", folder, None, num_records, _notes(defects), _notes(unusual))
