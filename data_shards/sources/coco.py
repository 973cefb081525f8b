"""COCO-style annotation exports (the shape SAM2 exports reduce to) → questions about objects, counts, boxes.

Each image becomes one conversation: which objects it holds, how many of its most frequent
category, and where the first object is (box as fractions of width/height). A `video_id` on an
image becomes the sample's group, so frames of one video never straddle two splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import Turn
from data_shards.sources.common import load_json

NAME = "coco"


def detect(document: Any) -> bool:
    return isinstance(document, dict) and {"images", "annotations"} <= set(document)


def default_image_root(path: Path) -> Path:
    return path.parent


def read(path: Path, image_root: Path, options: Any) -> Iterator[RawSample | Reject]:
    document = load_json(path)
    if not detect(document) or not isinstance(document.get("images"), list):
        raise SourceError(f"{path}: a COCO file needs 'images' and 'annotations' lists")
    categories = {c["id"]: c["name"] for c in document.get("categories", []) if isinstance(c, dict)}
    by_image = defaultdict(list)
    for annotation in document["annotations"]:
        if isinstance(annotation, dict):
            by_image[annotation.get("image_id")].append(annotation)
    for index, image in enumerate(document["images"]):
        origin = f"{path.name}:images[{index}]"
        key = f"img{image.get('id')}" if isinstance(image, dict) else f"images[{index}]"
        try:
            yield image_sample(image, by_image[image["id"]], categories, key, origin)
        except (ValueError, KeyError, TypeError) as error:
            yield Reject(key, "malformed_record", f"{type(error).__name__}: {error}", origin)


def image_sample(image: dict, annotations: list[dict], categories: dict, key: str, origin: str) -> RawSample:
    width, height = float(image["width"]), float(image["height"])
    objects = []
    for annotation in annotations:
        name = categories.get(annotation["category_id"])
        if name is None:
            raise ValueError(f"annotation {annotation.get('id')} has unknown category {annotation['category_id']}")
        objects.append((name, checked_box(annotation, width, height)))
    turns = conversation(objects, width, height)
    counts = Counter(name for name, _ in objects)
    label = counts.most_common(1)[0][0] if counts else "none"
    group = str(image["video_id"]) if image.get("video_id") is not None else None
    return RawSample(key, [image["file_name"]], turns, origin, label=label, group=group, source=NAME)


def checked_box(annotation: dict, width: float, height: float) -> list[float]:
    x, y, w, h = (float(v) for v in annotation["bbox"])
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 1 or y + h > height + 1:
        raise ValueError(
            f"annotation {annotation.get('id')} bbox {annotation['bbox']} lies outside {width:g}x{height:g}"
        )
    return [x, y, w, h]


def conversation(objects: list[tuple[str, list[float]]], width: float, height: float) -> list[Turn]:
    names = sorted({name for name, _ in objects})
    turns = [Turn("user", "<image>\nWhich objects are in the image?"), Turn("assistant", ", ".join(names) or "none")]
    if not objects:
        return turns
    counts = Counter(name for name, _ in objects)
    common = counts.most_common(1)[0][0]
    turns += [Turn("user", f"How many {common} objects are there?"), Turn("assistant", str(counts[common]))]
    name, (x, y, w, h) = objects[0]
    box = [x / width, y / height, (x + w) / width, (y + h) / height]
    turns += [Turn("user", f"Where is the {name}?"), Turn("assistant", "[" + ", ".join(f"{v:.2f}" for v in box) + "]")]
    return turns
