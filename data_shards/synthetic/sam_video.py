"""SA-V-style videos for the synthetic `sam` export: shapes moving along lanes, every frame a JPEG, masklets
as compressed RLE; `edits` break chosen annotated frames (see `data_shards.synthetic.sam`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from data_shards.sources.sam.rle import encode
from data_shards.synthetic.drawing import PlacedShape, _fill_shape, pick, render
from data_shards.synthetic.files import save_image, write_json
from data_shards.synthetic.plan import Plan
from data_shards.synthetic.vocabulary import COLORS, SHAPES

STRIDE = 4
VIDEO_FOLDER = "sav_train/sav_000"
FRAME_FOLDER = "JPEGImages_24fps"


@dataclass
class Track:
    """A shape moving along its own horizontal lane; hidden before `first` and in `hidden` (annotated frames)."""

    shape: str
    color: str
    y: int
    x0: int
    velocity: int
    extent: int
    first: int = 0
    hidden: set[int] = field(default_factory=set)

    def placed(self, frame: int, width: int) -> PlacedShape | None:
        if frame < self.first * STRIDE or frame // STRIDE in self.hidden:
            return None
        span = width - self.extent
        position = (self.x0 + self.velocity * frame) % (2 * span)
        return PlacedShape(self.shape, self.color, min(position, 2 * span - position), self.y, self.extent)


def shape_mask(placed: PlacedShape | None, height: int, width: int) -> np.ndarray:
    canvas = Image.new("RGB", (width, height))
    if placed is not None:
        _fill_shape(ImageDraw.Draw(canvas), placed)
    return np.asarray(canvas).any(axis=2)


def make_tracks(plan: Plan, count: int, height: int, width: int) -> list[Track]:
    lane = height // count
    tracks = []
    for number in range(count):
        extent = int(plan.rng.integers(max(3, lane // 2), max(4, lane * 9 // 10) + 1))
        x0 = int(plan.rng.integers(0, width - extent))
        velocity = int(plan.rng.choice([-1, 1]))
        y = number * lane + (lane - extent) // 2
        tracks.append(Track(pick(plan.rng, SHAPES), pick(plan.rng, tuple(COLORS)), y, x0, velocity, extent))
    return tracks


@dataclass
class Video:
    video_id: str
    tracks: list[Track]
    annotated: int
    background: str


def frame_size(plan: Plan) -> tuple[int, int]:
    return plan.image_size, plan.image_size * 3 // 2


def write_video(
    plan: Plan, video: Video, edit: Callable[[int, list], list] | None = None, duplicates: frozenset = frozenset()
) -> None:
    """Every frame as JPEG and the manual JSON. `edit(annotated_index, rles)` may break a frame's RLEs; an
    annotated frame in `duplicates` repeats the previous annotated frame's bytes and masks (a frozen frame)."""
    height, width = frame_size(plan)
    masklet: list[list[dict]] = []
    previous = b""
    for frame in range(video.annotated * STRIDE):
        placed = [track.placed(frame, width) for track in video.tracks]
        image = render([p for p in placed if p], video.background, width, plan.rng).crop((0, 0, width, height))
        path = plan.root / FRAME_FOLDER / video.video_id / f"{frame:05d}.jpg"
        save_image(image, path)
        index, offset = divmod(frame, STRIDE)
        if offset:
            continue
        if index in duplicates:
            path.write_bytes(previous)
            masklet.append(list(masklet[-1]))
            continue
        previous = path.read_bytes()
        rles = [encode(shape_mask(p, height, width)) for p in placed]
        masklet.append(edit(index, rles) if edit else rles)
    write_json(plan.root / VIDEO_FOLDER / f"{video.video_id}_manual.json", manual_json(video, masklet, height, width))


def manual_json(video: Video, masklet: list, height: int, width: int) -> dict:
    return {
        "video_id": video.video_id,
        "video_frame_count": float(video.annotated * STRIDE),
        "video_height": float(height),
        "video_width": float(width),
        "masklet": masklet,
        "masklet_id": list(range(len(video.tracks))),
        "masklet_first_appeared_frame": [float(track.first) for track in video.tracks],
        "masklet_frame_count": [video.annotated] * len(video.tracks),
        "masklet_num": len(video.tracks),
    }
