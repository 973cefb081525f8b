"""The oxford_flowers102 release as it unpacks: `jpg/image_00001.jpg …`, `imagelabels.mat` (`labels`: the class,
1..102, of each image in image order) and `setid.mat` (`trnid`, `valid`, `tstid`: 1-based image ids).

Each image is a class question ("What kind of flower is this?" unless `--class-question` is given) answered by
its class name, with `label` = the name and `split` = train, val or test as setid.mat gives it (the build keeps it
with `--split-by source`, its default for this format). Names come from `--class-names`, one per line, line i naming
label i; without one they are `class_001` …. A wrong count of names, labels outside 1..N, an image id in two splits
or in none, and images in jpg/ beyond the labelled ones are SourceErrors naming the file; an image that is labelled
but absent from jpg/ is rejected by the checks as `missing_image`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import Turn
from data_shards.sources.common import SourceOptions, read_text
from data_shards.sources.mat5 import read_vector

NAME = "flowers102"
KEEPS_SPLIT = True
LABELS_FILE, SETID_FILE, IMAGE_DIR = "imagelabels.mat", "setid.mat", "jpg"
SPLIT_VARIABLES = (("trnid", "train"), ("valid", "val"), ("tstid", "test"))
QUESTION = "<image>\nWhat kind of flower is this?"
IMAGE_NAME = re.compile(r"image_(\d+)\.jpg")


def detect_folder(path: Path) -> bool:
    return (path / LABELS_FILE).is_file() and (path / IMAGE_DIR).is_dir()


def default_image_root(path: Path) -> Path:
    return path


def whole_numbers(values: np.ndarray, path: Path, name: str, low: int, high: int) -> list[int]:
    bad = values[(values != np.round(values)) | (values < low) | (values > high)]
    if bad.size:
        raise SourceError(f"{path}: {name} must hold whole numbers in {low}..{high}, found {bad[:5].tolist()}")
    return [int(value) for value in values]


def image_labels(path: Path) -> list[int]:
    labels = read_vector(path, "labels")
    if labels.size == 0:
        raise SourceError(f"{path}: 'labels' is empty")
    return whole_numbers(labels, path, "'labels'", 1, int(max(labels.max(), 1)))


def image_splits(path: Path, count: int) -> list[str]:
    """The split of every image (index 0 is image 1); each image must be in exactly one of the three lists."""
    if not path.is_file():
        raise SourceError(f"{path}: no such file (the release's train/val/test split)")
    splits: list[str | None] = [None] * count
    for variable, split in SPLIT_VARIABLES:
        for image_id in whole_numbers(read_vector(path, variable), path, repr(variable), 1, count):
            if splits[image_id - 1] is not None:
                raise SourceError(f"{path}: image {image_id} is in both {splits[image_id - 1]} and {split}")
            splits[image_id - 1] = split
    missing = [index + 1 for index, split in enumerate(splits) if split is None]
    if missing:
        raise SourceError(f"{path}: {len(missing)} of {count} images are in no split (first ids: {missing[:5]})")
    return [str(split) for split in splits]


def class_names(path: Path | None, count: int, labels_file: Path) -> list[str]:
    """Line i names label i; blank lines may only trail."""
    if path is None:
        return [f"class_{label:03d}" for label in range(1, count + 1)]
    lines = read_text(path).rstrip().splitlines()
    blank = [number for number, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        raise SourceError(f"{path}: line {blank[0]} is blank (line i names label i)")
    if len(lines) != count:
        raise SourceError(f"{path}: {len(lines)} names, but {labels_file.name} has labels 1..{count}")
    return [line.strip() for line in lines]


def check_image_folder(folder: Path, count: int) -> None:
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder (the release's images)")
    extra = sorted(p.name for p in folder.iterdir() if (m := IMAGE_NAME.fullmatch(p.name)) and int(m[1]) > count)
    if extra:
        raise SourceError(f"{folder}: {len(extra)} images beyond the {count} labelled ones (first: {extra[0]})")


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    if not path.is_dir():
        raise SourceError(f"{path}: the {NAME} format expects the release's folder (jpg/, {LABELS_FILE})")
    labels = image_labels(path / LABELS_FILE)
    splits = image_splits(path / SETID_FILE, len(labels))
    names = class_names(options.class_names, max(labels), path / LABELS_FILE)
    check_image_folder(path / IMAGE_DIR, len(labels))
    question = QUESTION if options.class_question == SourceOptions.class_question else options.class_question
    for image_id, (label, split) in enumerate(zip(labels, splits), start=1):
        stem = f"image_{image_id:05d}"
        ref = f"{IMAGE_DIR}/{stem}.jpg"
        name = names[label - 1]
        turns = [Turn("user", question), Turn("assistant", options.class_answer.format(name=name))]
        extra = {"choices": names} if options.class_choices else {}
        yield RawSample(stem, [ref], turns, ref, label=name, source=NAME, extra=extra, split=split)
