"""`--split-by time`: within each video, earlier frames to the first split, later ones to the next, with a gap.

Each group's samples (a video's frames, by `extra.frame_index`) are cut, in frame order, into consecutive
runs sized by the ratios (largest-remainder rounding, as in the other strategies), in the order the splits
are named. A frame of a later run within `gap` frames of the previous run's last frame is dropped, so that
near-identical neighbouring frames never sit on both sides of a boundary; the build rejects it as
`time_gap`, so counts still reconcile. `gap` counts video frames (SA-V annotates every 4th).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from data_shards.records import Reject
from data_shards.split import SplitError, quotas


def temporal(groups: Sequence[str], frames: Sequence[int | None], weights: list[float], gap: int) -> list[int | None]:
    """The part of every item, None for the items dropped in a gap."""
    missing = sum(frame is None for frame in frames)
    if missing:
        raise SplitError(
            f"--split-by time needs extra.frame_index (a video frame) on every sample; {missing} of "
            f"{len(frames)} have none (still images cannot be ordered in time)"
        )
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    parts: list[int | None] = [None] * len(groups)
    for group in sorted(members):
        ordered = sorted(members[group], key=lambda index: (frames[index], index))
        start, boundary = 0, None
        for part, count in enumerate(quotas(len(ordered), weights)):
            run = ordered[start : start + count]
            start += count
            for index in run:
                if boundary is None or frames[index] > boundary + gap:
                    parts[index] = part
            if run:
                boundary = frames[run[-1]]
    return parts


def gap_rejects(kept: list, splits: dict[str, list], gap: int) -> tuple[list, list[Reject]]:
    """The kept samples a time split placed, and a `time_gap` reject for each one it left out."""
    placed = {id(sample) for members in splits.values() for sample in members}
    rejects = [
        Reject(
            s.raw.key,
            "time_gap",
            f"frame {s.raw.extra.get('frame_index')} of {s.raw.group} is within {gap} frames of the previous split",
            s.raw.origin,
        )
        for s in kept
        if id(s) not in placed
    ]
    return [s for s in kept if id(s) in placed], rejects
