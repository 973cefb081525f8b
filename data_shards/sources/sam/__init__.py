"""The `sam` format: what SAM tools export (SA-V videos, SA-1B images, COCO with masks), in a folder or a `.zip`.

Every JSON file of the export (or the one JSON file given) is read by its shape: an SA-V `*_manual.json`
(`masklet`; SA-V's `*_auto.json` model-made masklets are skipped), an SA-1B image file (`image` and
`annotations`) or a COCO file (`images` and `annotations`); other JSON files are not annotations and are
skipped. One sample per annotated frame or image; a broken annotation rejects its frame with a reason
naming the file, frame and object (see `masks` for the rules and tolerances). Unusual frames are kept
and noted in `extra.notes` for the report: `duplicate_frame` (same bytes as an earlier frame, named in
`extra.duplicate_of`) and `no_objects`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject, SourceError
from data_shards.sources.sam.export import open_export, zip_cache_folder
from data_shards.sources.sam.sa1b import detect_coco, detect_sa1b, read_coco, read_sa1b
from data_shards.sources.sam.samples import NAME, FrameLog
from data_shards.sources.sam.sav import detect as detect_sav
from data_shards.sources.sam.sav import read_video

AUTO_SUFFIX = "_auto.json"
PARTS = ((detect_sav, read_video), (detect_sa1b, read_sa1b), (detect_coco, read_coco))

__all__ = ["NAME", "detect", "detect_folder", "default_image_root", "read"]


def detect(document: Any) -> bool:
    """An SA-V or SA-1B document (COCO files are the `coco` format unless `--format sam` is given)."""
    return detect_sav(document) or detect_sa1b(document)


def detect_folder(path: Path) -> bool:
    return any(path.rglob("*_manual.json")) or any(path.rglob("sa_*.json"))


def default_image_root(path: Path) -> Path:
    if path.suffix.lower() == ".zip":
        return zip_cache_folder(path)
    return path if path.is_dir() else path.parent


def read(path: Path, image_root: Path, options: Any) -> Iterator[RawSample | Reject]:
    if path.is_file() and path.suffix.lower() not in (".zip", ".json"):
        raise SourceError(f"{path}: the sam format reads a folder, a .zip or one .json file")
    export = open_export(path, image_root)
    try:
        members = [str(path.absolute())] if path.is_file() and path.suffix.lower() == ".json" else export.files
        jsons = [m for m in members if m.lower().endswith(".json") and not m.endswith(AUTO_SUFFIX)]
        log, found = FrameLog(), False
        for member in jsons:
            document = export.load_json(member)
            for detect_part, read_part in PARTS:
                if detect_part(document):
                    found = True
                    yield from read_part(export, member, document, log)
                    break
        if not found:
            raise SourceError(f"{path}: no SA-V, SA-1B or COCO annotation file among {len(jsons)} JSON files")
    finally:
        export.close()
