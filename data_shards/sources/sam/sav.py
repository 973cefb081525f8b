"""SA-V `{video_id}_manual.json`: masklets (frames x objects of COCO RLEs) → one sample per annotated frame.

Frame mapping. SA-V annotates every 4th frame of its 24 fps videos: `masklet[i]` is video frame 4i
(the stride is taken from the JSON as the smallest s with ceil(video_frame_count / s) == len(masklet),
4 when video_frame_count is absent). Frames are looked for as `{video_id}/NNNNN.jpg|png` anywhere in
the export: named by video frame (SAM 2's 24 fps extraction, `masklet[i]` ↔ file 4i) or, when the
folder holds exactly one file per annotated frame, numbered 0..n-1 (extracted at 6 fps, `masklet[i]`
↔ file i). `frame_index` in a sample's extra is always the video frame, 4i, which `--time-gap` counts in.

An empty mask means the object is not visible in that frame (SA-V keeps one RLE per object in every
annotated frame), except at the object's `masklet_first_appeared_frame` (counted in annotated frames),
where an empty mask contradicts the annotation and rejects the frame.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from data_shards.records import RawSample, Reject
from data_shards.sources.sam.export import Export
from data_shards.sources.sam.masks import MaskError, measure, segmentation_mask
from data_shards.sources.sam.samples import FrameLog, make_sample

DEFAULT_STRIDE = 4
SUFFIX = "_manual.json"


def detect(document) -> bool:
    return isinstance(document, dict) and isinstance(document.get("masklet"), list)


def frame_stride(document: dict) -> int:
    """The smallest s with ceil(video_frame_count / s) == len(masklet), else SA-V's 4."""
    count, annotated = document.get("video_frame_count"), len(document["masklet"])
    if not isinstance(count, (int, float)) or count <= 0 or annotated == 0:
        return DEFAULT_STRIDE
    stride = math.ceil(count / annotated)
    return stride if math.ceil(count / stride) == annotated else DEFAULT_STRIDE


@dataclass
class Video:
    """What every frame of one SA-V JSON needs: ids, size, first appearances and where its frame files are."""

    video_id: str
    shape: tuple[int, int]
    ids: list
    first: list
    stride: int
    files: dict[int, str]
    at_annotation_rate: bool

    @classmethod
    def from_json(cls, export: Export, member: str, document: dict) -> Video:
        video_id = str(document.get("video_id") or posixpath.basename(member).removesuffix(SUFFIX))
        ids = list(document["masklet_id"])
        first = list(document.get("masklet_first_appeared_frame") or [None] * len(ids))
        if len(first) != len(ids):
            raise ValueError(f"{len(first)} masklet_first_appeared_frame values for {len(ids)} masklet_id")
        files = export.numbered.get(video_id, {})  # numbered frames in folders named after the video
        return cls(
            video_id,
            (int(document["video_height"]), int(document["video_width"])),
            ids,
            first,
            frame_stride(document),
            files,
            sorted(files) == list(range(len(document["masklet"]))),
        )

    def frame_file(self, index: int) -> str | None:
        return self.files.get(index if self.at_annotation_rate else index * self.stride)


def read_video(export: Export, member: str, document: dict, log: FrameLog) -> Iterator[RawSample | Reject]:
    where = export.where(member)
    try:
        video = Video.from_json(export, member, document)
    except (KeyError, TypeError, ValueError) as error:
        key = document.get("video_id") or posixpath.basename(member).removesuffix(SUFFIX)
        yield Reject(str(key), "malformed_record", f"{where}: video header: {type(error).__name__}: {error}", where)
        return
    for index, entry in enumerate(document["masklet"]):
        yield frame_record(export, member, video, index, entry, log)


def frame_record(export: Export, member: str, video: Video, index: int, entry, log: FrameLog) -> RawSample | Reject:
    frame = index * video.stride
    key = f"{video.video_id}_{frame:05d}"
    origin = f"{export.where(member)}:masklet[{index}]"
    file = video.frame_file(index)
    try:
        objects = frame_objects(entry, video, index, origin)
        facts = log.inspect(export, file, key, video.shape, origin)
    except MaskError as error:
        return Reject(key, error.reason, error.detail, origin)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        return Reject(key, "malformed_record", f"{origin}: {type(error).__name__}: {error}", origin)
    ref = export.image_ref(file) if file else missing_ref(export, member, video.video_id, frame)
    extra = {"export": "sa-v", "video_id": video.video_id, "frame_index": frame, **facts}
    return make_sample(key, ref, objects, video.shape, origin, extra, group=video.video_id)


def frame_objects(entry, video: Video, index: int, origin: str) -> list:
    """The visible objects of one annotated frame, named `object {masklet_id}` in every frame of the video."""
    if not isinstance(entry, list) or len(entry) != len(video.ids):
        raise ValueError(f"expected a list of {len(video.ids)} RLEs (one per masklet_id), got {entry!r:.60}")
    objects = []
    for rle, object_id, first in zip(entry, video.ids, video.first):
        where = f"{origin} object {object_id}"
        mask, _ = segmentation_mask(rle, *video.shape, where)
        if mask.any():
            objects.append(measure(object_id, f"object {object_id}", mask))
        elif first is not None and int(first) == index:
            raise MaskError("empty_mask", f"{where}: empty at the object's first appearance (annotated frame {index})")
    return objects


def missing_ref(export: Export, member: str, video_id: str, frame: int) -> str:
    """Where the frame was expected (beside the JSON), so that the image checks name it as missing."""
    expected = posixpath.join(posixpath.dirname(member), video_id, f"{frame:05d}.jpg")
    return expected if export.archive else export.image_ref(expected)
