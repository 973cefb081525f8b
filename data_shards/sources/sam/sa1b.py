"""SA-1B `sa_N.json` (one image, its class-agnostic masks) and COCO files with `segmentation` → samples.

SA-1B: `image` {image_id, width, height, file_name} and `annotations` [{segmentation (RLE), bbox, area,
predicted_iou, stability_score, point_coords}]; objects are named `object 1`..`object N` in file order,
their ids kept in `extra.object_ids`. COCO: polygons or RLE (counts list or string) per annotation,
category names as object names; a `video_id` on an image is the group, `frame_index` (or `frame_id`) its time.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterator

from data_shards.records import RawSample, Reject
from data_shards.sources.sam.export import Export
from data_shards.sources.sam.masks import MaskedObject, MaskError, check_annotated, measure, segmentation_mask
from data_shards.sources.sam.samples import FrameLog, make_sample


def detect_sa1b(document) -> bool:
    return isinstance(document, dict) and isinstance(document.get("image"), dict) and "annotations" in document


def detect_coco(document) -> bool:
    return isinstance(document, dict) and isinstance(document.get("images"), list) and "annotations" in document


def checked_object(annotation: dict, number: int, name: str, shape: tuple[int, int], where: str) -> MaskedObject:
    mask, polygon = segmentation_mask(annotation["segmentation"], *shape, where)
    check_annotated(mask, polygon, annotation.get("bbox"), annotation.get("area"), shape, where)
    return measure(annotation.get("id", number), name, mask)


def object_name(annotation: dict, number: int, categories: dict | None) -> str:
    if categories is None:
        return f"object {number}"
    if annotation.get("category_id") not in categories:
        raise ValueError(
            f"annotation {annotation.get('id', number)} has unknown category {annotation.get('category_id')}"
        )
    return categories[annotation["category_id"]]


def image_sample(
    export: Export, member: str, image: dict, annotations: list, key: str, log: FrameLog, categories: dict | None
) -> RawSample | Reject:
    """The sample of one image, or the reject naming the first broken annotation."""
    where = f"{export.where(member)} image {image.get('image_id', image.get('id'))}"
    try:
        shape = (int(image["height"]), int(image["width"]))
        objects = []
        for number, annotation in enumerate(annotations, start=1):
            name = object_name(annotation, number, categories)
            what = f"{where} annotation {annotation.get('id', number)}"
            objects.append(checked_object(annotation, number, name, shape, what))
        file = export.find(posixpath.dirname(member), str(image["file_name"]))
        extra = {
            "export": "coco" if categories is not None else "sa-1b",
            **log.inspect(export, file, key, shape, where),
        }
    except MaskError as error:
        return Reject(key, error.reason, error.detail, where)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return Reject(key, "malformed_record", f"{where}: {type(error).__name__}: {error}", where)
    ref = export.image_ref(file) if file else posixpath.join(posixpath.dirname(member), str(image["file_name"]))
    frame = image.get("frame_index", image.get("frame_id"))
    if isinstance(frame, int):
        extra["frame_index"] = frame
    group = str(image["video_id"]) if image.get("video_id") is not None else None
    return make_sample(key, ref, objects, shape, where, extra, named=categories is not None, group=group)


def read_sa1b(export: Export, member: str, document: dict, log: FrameLog) -> Iterator[RawSample | Reject]:
    image = document["image"]
    stem = posixpath.splitext(posixpath.basename(str(image.get("file_name", member))))[0]
    annotations = document["annotations"] if isinstance(document["annotations"], list) else None
    if annotations is None:
        where = export.where(member)
        yield Reject(stem, "malformed_record", f"{where}: annotations must be a list", where)
        return
    yield image_sample(export, member, image, annotations, stem, log, None)


def read_coco(export: Export, member: str, document: dict, log: FrameLog) -> Iterator[RawSample | Reject]:
    categories = {c.get("id"): str(c.get("name")) for c in document.get("categories", []) if isinstance(c, dict)}
    by_image = defaultdict(list)
    for annotation in document["annotations"]:
        if isinstance(annotation, dict):
            by_image[annotation.get("image_id")].append(annotation)
    stem = posixpath.splitext(posixpath.basename(member))[0]
    for index, image in enumerate(document["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        key = f"{stem}_img{image_id if image_id is not None else index}"
        if not isinstance(image, dict):
            where = export.where(member)
            yield Reject(key, "malformed_record", f"{where}: images[{index}] is not an object", where)
            continue
        yield image_sample(export, member, image, by_image[image_id], key, log, categories)
