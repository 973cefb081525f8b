"""`make_dataset`: checks the arguments and hands a `Plan` to the writer of the requested format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_shards.synthetic.coco import write_coco
from data_shards.synthetic.conversations import write_llava, write_messages
from data_shards.synthetic.drawing import MIN_IMAGE_SIZE, require
from data_shards.synthetic.flowers import write_flowers
from data_shards.synthetic.hf_disk import write_hf_disk
from data_shards.synthetic.image_files import write_captions, write_classes, write_manifest
from data_shards.synthetic.pairs import write_pairs
from data_shards.synthetic.parquet import write_cauldron, write_onevision
from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.sam import write_sam
from data_shards.synthetic.scores import FORMAT as SCORES_FORMAT
from data_shards.synthetic.scores import write_scores
from data_shards.synthetic.vocabulary import TASKS

_WRITERS: dict[str, Callable[[Plan], SyntheticDataset]] = {
    "llava": write_llava,
    "messages": write_messages,
    "captions": write_captions,
    "manifest": write_manifest,
    "classes": write_classes,
    "pairs": write_pairs,
    "coco": write_coco,
    "sam": write_sam,
    SCORES_FORMAT: write_scores,
    "flowers102": write_flowers,
    "cauldron": write_cauldron,
    "onevision": write_onevision,
    "hf-disk": write_hf_disk,
}
SYNTH_FORMATS = tuple(_WRITERS)  # the build's formats, `scores` (for `pairs`), and the HF layouts by name


def _check_arguments(fmt: str, n: int, image_size: int, task: str, jsonl: bool, class_names: bool) -> None:
    require(fmt, SYNTH_FORMATS, "format")
    require(task, TASKS, "task")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    if jsonl and fmt != "llava":
        raise ValueError("jsonl=True applies to the llava format only")
    if class_names and fmt != "classes":
        raise ValueError("class_names=True applies to the classes format only")


def make_dataset(
    fmt: str,
    out: Path,
    n: int = 64,
    seed: int = 0,
    image_size: int = 32,
    defects: bool = False,
    task: str = "color",
    *,
    jsonl: bool = False,
    class_names: bool = False,
    unusual: bool | None = None,
) -> SyntheticDataset:
    """Writes n good records in format `fmt` under `out`, plus defective and unusual ones when asked.

    `unusual` defaults to `defects`. `jsonl` (llava only) writes data.jsonl instead of data.json;
    `class_names` (classes only) writes class_names.json. The `path_escapes_root` defect's target,
    `out/../outside.jpg`, is the one file written outside `out`.
    """
    _check_arguments(fmt, n, image_size, task, jsonl, class_names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with_unusual = defects if unusual is None else unusual
    plan = Plan(out, np.random.default_rng(seed), n, image_size, task, defects, with_unusual, jsonl, class_names)
    return _WRITERS[fmt](plan)
