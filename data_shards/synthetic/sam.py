"""The sam format: an SA-V-style export of short videos of moving shapes, every frame a JPEG, masklets as RLE.

Layout, as SA-V and SAM 2's 24 fps frame extraction leave it:
`sav_train/sav_000/{video_id}_manual.json` and `JPEGImages_24fps/{video_id}/00000.jpg ...` (every frame;
`masklet[i]` is frame 4i). Frames are 1.5 times wider than high so that height and width cannot be swapped
unnoticed. Two or three good videos hold the n good annotated frames (at least two each); with defects or
unusual records one more video holds the broken and odd frames, and with defects `sa1b/` holds SA-1B-style
images for the defects that need fields SA-V lacks (bbox, area). Keys: `{video_id}_{frame:05d}`, `sa_{k}`.
"""

from __future__ import annotations

import numpy as np

from data_shards.sources.sam.rle import decode, encode
from data_shards.synthetic.drawing import PlacedShape, pick, render
from data_shards.synthetic.files import save_image, write_json
from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.sam_video import STRIDE, Video, frame_size, make_tracks, shape_mask, write_video
from data_shards.synthetic.vocabulary import BACKGROUNDS, COLORS, SHAPES


def good_videos(plan: Plan) -> list[Video]:
    count = 2 if plan.n < 12 else 3
    height, width = frame_size(plan)
    shares = np.full(count, plan.n // count) + (np.arange(count) < plan.n % count)
    videos = []
    for number, share in enumerate(shares, start=1):
        tracks = make_tracks(plan, int(plan.rng.integers(1, 4)), height, width)
        if number == 2 and len(tracks) > 1:
            tracks[-1].first = 1  # absent (an empty RLE) in the first annotated frame
        videos.append(Video(f"sav_{number:06d}", tracks, max(2, int(share)), pick(plan.rng, tuple(BACKGROUNDS))))
    return videos


ODD_DEFECTS = {
    "size": "mask_size_mismatch",
    "malformed": "malformed_mask",
    "empty_first": "empty_mask",
    "duplicate": "duplicate_sample",
}


def odd_frames(plan: Plan) -> list[str]:
    """The odd video's annotated frames in order: good ones around the defects, the unusual one last."""
    kinds = ["good", "size", "malformed", "empty_first", "good", "duplicate"] if plan.defects else ["good", "good"]
    return kinds + (["no_objects"] if plan.unusual else [])


def broken(kind: str, rles: list[dict], height: int, width: int) -> list[dict]:
    """The RLEs of one annotated frame with the defect `kind` (object 0, or 1 for `empty_first`)."""
    rles = list(rles)
    if kind == "size":
        rles[0] = encode(np.pad(decode(rles[0]), ((0, 0), (0, 2))))
    elif kind == "malformed":
        rles[0] = {"size": [height, width], "counts": rles[0]["counts"][:-1]}
    elif kind == "empty_first":
        rles[1] = encode(np.zeros((height, width), dtype=bool))
    return rles


def write_odd_video(plan: Plan, video_id: str, defects: dict[str, str], unusual: dict[str, str]) -> int:
    kinds = odd_frames(plan)
    height, width = frame_size(plan)
    tracks = make_tracks(plan, 2, height, width)
    if "empty_first" in kinds:
        tracks[1].first = kinds.index("empty_first")
    for track in tracks:
        track.hidden = {i for i, kind in enumerate(kinds) if kind == "no_objects"}
    video = Video(video_id, tracks, len(kinds), pick(plan.rng, tuple(BACKGROUNDS)))
    duplicates = frozenset(i for i, kind in enumerate(kinds) if kind == "duplicate")
    write_video(plan, video, lambda index, rles: broken(kinds[index], rles, height, width), duplicates)
    for index, kind in enumerate(kinds):
        key = f"{video_id}_{index * STRIDE:05d}"
        if kind in ODD_DEFECTS:
            defects[key] = ODD_DEFECTS[kind]
        elif kind == "no_objects":
            unusual[key] = "no_objects"
    return len(kinds)


SA1B_DEFECTS = ("mask_area_mismatch", "mask_outside_bbox", "bbox_outside_image")


def sa1b_annotation(placed: PlacedShape, number: int, size: int, defect: str | None) -> dict:
    mask = shape_mask(placed, size, size)
    area = int(mask.sum())
    bbox = [placed.x, placed.y, placed.extent, placed.extent]
    if defect == "mask_area_mismatch":
        area = 3 * area + 10
    elif defect == "mask_outside_bbox":
        bbox[2] = max(1, placed.extent // 2 - 2)
    elif defect == "bbox_outside_image":
        bbox = [size + 4, 0, 4, 4]
    centre = [placed.x + placed.extent / 2, placed.y + placed.extent / 2]
    return {
        "id": number,
        "segmentation": encode(mask),
        "bbox": bbox,
        "area": area,
        "predicted_iou": 0.9,
        "stability_score": 0.95,
        "point_coords": [centre],
        "crop_box": [0, 0, size, size],
    }


def write_sa1b_defects(plan: Plan, defects: dict[str, str]) -> int:
    """SA-1B-style images, each with one broken annotation (the first) among one or two good ones."""
    size = plan.image_size
    for number, defect in enumerate(SA1B_DEFECTS, start=1):
        extent = int(plan.rng.integers(size // 4, size // 2 + 1))
        shapes = [
            PlacedShape(pick(plan.rng, SHAPES), pick(plan.rng, tuple(COLORS)), x, y, extent)
            for x, y in ((0, 0), (size - extent, size - extent))[: int(plan.rng.integers(1, 3))]
        ]
        image = render(shapes, pick(plan.rng, tuple(BACKGROUNDS)), size, plan.rng)
        save_image(image, plan.root / "sa1b" / f"sa_{number}.jpg")
        annotations = [
            sa1b_annotation(placed, number * 100 + k, size, defect if k == 0 else None)
            for k, placed in enumerate(shapes)
        ]
        header = {"image_id": number, "width": size, "height": size, "file_name": f"sa_{number}.jpg"}
        write_json(plan.root / "sa1b" / f"sa_{number}.json", {"image": header, "annotations": annotations})
        defects[f"sa_{number}"] = defect
    return len(SA1B_DEFECTS)


def write_sam(plan: Plan) -> SyntheticDataset:
    videos = good_videos(plan)
    for video in videos:
        write_video(plan, video)
    records = sum(video.annotated for video in videos)
    defects: dict[str, str] = {}
    unusual: dict[str, str] = {}
    if plan.defects or plan.unusual:
        records += write_odd_video(plan, f"sav_{len(videos) + 1:06d}", defects, unusual)
    if plan.defects:
        records += write_sa1b_defects(plan, defects)
    return SyntheticDataset("sam", plan.root, plan.root, records, defects, unusual)
