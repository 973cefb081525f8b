"""The flowers102 format: the oxford_flowers102 release as it unpacks (`jpg/image_00001.jpg …`, `imagelabels.mat`,
`setid.mat`), plus `class_names.txt`, with `write_mat` writing MAT 5 files the way MATLAB does.

Classes are the first three colours (label 1..3 in that order), each image a shape of its class's colour. Within
a class the images go train, val, test in turn, so every split holds every class. With defects, two more images
are labelled and split like the others: one listed but absent from jpg/ (`missing_image`), one truncated.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from data_shards.synthetic.files import save_image, write_broken_image, write_text
from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.vocabulary import COLORS

FORMAT = "flowers102"
NAMES_FILE = "class_names.txt"
CLASSES = tuple(COLORS)[:3]
SPLITS = ("trnid", "valid", "tstid")
_CLASS_DOUBLE = 6
_TYPES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 9}


def _element(kind: int, body: bytes, order: str, small: bool = True) -> bytes:
    """A data element: the small form for up to 4 bytes (as MATLAB writes names and short data), else padded to 8."""
    if small and len(body) <= 4:
        return struct.pack(order + "I", len(body) << 16 | kind) + body.ljust(4, b"\0")
    return struct.pack(order + "II", kind, len(body)) + body + b"\0" * (-len(body) % 8)


def _matrix(name: str, values: np.ndarray, storage: str, order: str) -> bytes:
    flags = _element(6, struct.pack(order + "II", _CLASS_DOUBLE, 0), order)
    dims = _element(5, struct.pack(order + "ii", 1, values.size), order)
    data = np.asarray(values).astype(order + storage).tobytes()
    body = flags + dims + _element(1, name.encode("ascii"), order) + _element(_TYPES[storage], data, order)
    return _element(14, body, order, small=False)


def write_mat(
    path: Path,
    variables: Mapping[str, np.ndarray],
    storage: Mapping[str, str] | None = None,
    compress: bool = True,
    order: str = "<",
) -> None:
    """Each variable as a 1×N double array; `storage` picks the type its values are stored in (default `f8`),
    `compress` wraps each in a zlib miCOMPRESSED element (MATLAB's v7 default), `order` is `<` or `>`."""
    text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by: shardtune synthetic"
    marker = b"IM" if order == "<" else b"MI"
    header = text.ljust(116, b" ") + b"\0" * 8 + struct.pack(order + "H", 0x0100) + marker
    body = b""
    for name, values in variables.items():
        matrix = _matrix(name, np.asarray(values), (storage or {}).get(name, "f8"), order)
        if compress:  # unpadded, as MATLAB writes it
            packed = zlib.compress(matrix)
            matrix = struct.pack(order + "II", 15, len(packed)) + packed
        body += matrix
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body)


def _split_ids(labels: list[int]) -> dict[str, list[int]]:
    """Image ids (1-based) per split: within each class, train, val, test in turn."""
    ids: dict[str, list[int]] = {name: [] for name in SPLITS}
    seen = dict.fromkeys(range(1, len(CLASSES) + 1), 0)
    for image_id, label in enumerate(labels, start=1):
        ids[SPLITS[seen[label] % 3]].append(image_id)
        seen[label] += 1
    return ids


def write_flowers(plan: Plan) -> SyntheticDataset:
    count = plan.n + (2 if plan.defects else 0)
    labels = [index % len(CLASSES) + 1 for index in range(count)]
    images = plan.root / "jpg"
    for image_id, label in enumerate(labels[: plan.n], start=1):
        save_image(plan.picture(color=CLASSES[label - 1]).image, images / f"image_{image_id:05d}.jpg")
    defects = {}
    if plan.defects:
        missing, truncated = f"image_{plan.n + 1:05d}", f"image_{plan.n + 2:05d}"
        write_broken_image("truncated_image", images, truncated, plan.rng, plan.image_size)
        defects = {missing: "missing_image", truncated: "truncated_image"}
    write_mat(plan.root / "imagelabels.mat", {"labels": np.array(labels)}, {"labels": "u1"})
    ids = _split_ids(labels)
    write_mat(plan.root / "setid.mat", {k: np.array(v) for k, v in ids.items()}, dict.fromkeys(SPLITS, "u2"))
    write_text(plan.root / NAMES_FILE, "".join(f"{name} flower\n" for name in CLASSES[: max(labels)]))
    return SyntheticDataset(FORMAT, plan.root, None, count, defects, {})
