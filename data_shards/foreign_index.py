"""`python -m data_shards index DIR`: index WebDataset tars written by others in place, without rewriting a byte.

Each `DIR/*.tar` is read member by member with the stdlib `tarfile` (the webdataset library's tar iterator yields
names and bytes only, and the seek index needs each member's byte offset); a sample is a run of consecutive
members sharing a key. A sample without its image or caption member, with an empty caption, a repeated key or
member, a member name the seek reader cannot read back, or (with `validate`) an image that does not decode, is
left out of the index and reported with its reason: scanned = indexed + rejected. A tar that cannot be read
to its end is left out whole and named.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from data_shards.foreign import LAYOUT_KIND, Fields, caption_text, is_foreign
from data_shards.images import ImagePolicy, ImageRejected, open_checked
from data_shards.index import INDEX_NAME
from data_shards.tario import BLOCK, CorruptShardError, parse_header, split_name
from data_shards.write import ShardInfo, write_index

REPORT_NAME = "index_report.json"
LISTED_REJECTS = 1000


@dataclass
class Group:
    """Consecutive members sharing a key: one sample's byte range and its members by suffix."""

    key: str
    start: int
    end: int
    members: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    problem: tuple[str, str] | None = None


@dataclass
class TarScan:
    info: ShardInfo | None
    scanned: int = 0
    rejects: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def name_problem(handle: BinaryIO, info: tarfile.TarInfo) -> tuple[str, str] | None:
    """The seek reader takes names from the ustar header alone: a name held in a pax or GNU extension (long or
    non-ASCII) reads back differently there."""
    handle.seek(info.offset_data - BLOCK)
    try:
        parsed = parse_header(handle.read(BLOCK), info.name)
    except CorruptShardError as error:
        return "unsupported_member_name", str(error)
    if parsed is not None and parsed[0] == info.name:
        return None
    return "unsupported_member_name", f"{info.name!r} reads back from its ustar header as {parsed and parsed[0]!r}"


def tar_groups(tar: tarfile.TarFile, handle: BinaryIO) -> Iterator[Group]:
    group = None
    for info in tar:
        if not info.isreg():
            continue
        key, suffix = split_name(info.name)
        if group is None or key != group.key:
            if group is not None:
                yield group
            group = Group(key, info.offset, 0)
        if suffix in group.members:
            group.problem = ("duplicate_member", f"{info.name} appears twice in a row")
        group.problem = group.problem or name_problem(handle, info)
        group.members[suffix] = info
        group.end = info.offset_data + padded(info.size)
    if group is not None:
        yield group


def group_problem(tar: tarfile.TarFile, group: Group, fields: Fields, validate: bool) -> tuple[str, str] | None:
    if group.problem:
        return group.problem
    image, caption = fields.image_member(group.members), fields.caption_member(group.members)
    if image is None:
        return "missing_image", f"no {'/'.join(fields.image)} member (members: {sorted(group.members)})"
    if caption is None:
        return "missing_caption", f"no {'/'.join(fields.caption)} member (members: {sorted(group.members)})"
    if not caption_text(tar.extractfile(group.members[caption]).read()):
        return "empty_answer", f"{group.key}.{caption} is empty"
    if validate:
        try:
            open_checked(tar.extractfile(group.members[image]).read(), Path(f"{group.key}.{image}"), ImagePolicy())
        except ImageRejected as rejected:
            return rejected.reason, rejected.detail
    return None


def end_problem(path: Path, tar: tarfile.TarFile) -> str | None:
    """`tarfile` stops quietly at a damaged or missing header past the first: check it stopped at the
    end-of-archive marker (a zero block), which every tar writer ends with."""
    with open(path, "rb") as handle:
        handle.seek(tar.offset)
        block = handle.read(BLOCK)
    if len(block) < BLOCK:
        return f"truncated: no end-of-archive marker after the last member (byte {tar.offset})"
    if block != b"\0" * BLOCK:
        return f"unreadable tar header at byte {tar.offset}"
    return None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def scan_tar(path: Path, fields: Fields, validate: bool) -> TarScan:
    """Index entry and rejects of one tar; `error` (and no entry) when the tar cannot be read to its end."""
    scan, kept, seen = TarScan(None), [], set()
    try:
        with tarfile.open(path, "r:") as tar, open(path, "rb") as handle:
            for group in tar_groups(tar, handle):
                scan.scanned += 1
                problem = group_problem(tar, group, fields, validate)
                if problem is None and group.key in seen:
                    problem = ("duplicate_key", f"key {group.key!r} appears again, not next to its first members")
                seen.add(group.key)
                if problem is None:
                    kept.append(group)
                else:
                    scan.rejects.append(
                        {"tar": path.name, "key": group.key, "reason": problem[0], "detail": problem[1]}
                    )
            scan.error = end_problem(path, tar)
    except (tarfile.TarError, OSError, EOFError) as error:
        scan.error = f"{type(error).__name__}: {error}"
    if scan.error is None:
        digest = file_sha256(path)
        offsets = [group.start for group in kept] + [kept[-1].end if kept else 0]
        scan.info = ShardInfo(path.name, len(kept), path.stat().st_size, digest, offsets, [g.key for g in kept])
    return scan


def shared_keys(shards: list[ShardInfo]) -> dict[str, list[str]]:
    """Keys indexed in more than one tar (kept: each tar's samples are distinct files), key → tar names."""
    tars_of: dict[str, list[str]] = {}
    for shard in shards:
        for key in shard.keys:
            tars_of.setdefault(key, []).append(shard.name)
    return {key: names for key, names in tars_of.items() if len(names) > 1}


def check_folder(folder: Path) -> list[Path]:
    tars = sorted(path for path in folder.glob("*.tar") if path.is_file())
    if not tars:
        raise FileNotFoundError(f"{folder}: no *.tar files to index")
    index_path = folder / INDEX_NAME
    if index_path.exists():
        try:
            existing = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = {"layout": {"kind": LAYOUT_KIND}}  # a damaged index of ours is replaced
        if not is_foreign(existing):
            raise ValueError(f"{index_path}: the folder holds a split built by `data_shards build`, not foreign tars")
    return tars


def index_folder(folder: Path, fields: Fields, validate: bool = False) -> dict[str, Any]:
    """Scan every tar, write `index.json` and `index_report.json` beside them; returns the report."""
    scans = {path.name: scan_tar(path, fields, validate) for path in check_folder(folder)}
    shards = [scan.info for scan in scans.values() if scan.info is not None]
    rejects = [reject for scan in scans.values() if scan.error is None for reject in scan.rejects]
    report = folder_report(scans, shards, rejects, validate)
    (folder / REPORT_NAME).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if report["indexed"] == 0:
        raise ValueError(f"{folder}: no sample could be indexed (see {folder / REPORT_NAME})")
    fingerprint = hashlib.sha256(json.dumps([[s.name, s.sha256] for s in shards]).encode()).hexdigest()
    source = {"format": LAYOUT_KIND, "fingerprint": fingerprint, "validated": validate}
    write_index(folder, folder.name, shards, {"layout": fields.to_layout(), "source": source})
    return report


def folder_report(scans: dict[str, TarScan], shards: list[ShardInfo], rejects: list[dict], validate: bool) -> dict:
    reasons: dict[str, int] = {}
    for reject in rejects:
        reasons[reject["reason"]] = reasons.get(reject["reason"], 0) + 1
    shared = shared_keys(shards)
    return {
        "tars": len(scans),
        "scanned": sum(scan.scanned for scan in scans.values() if scan.error is None),
        "indexed": sum(shard.samples for shard in shards),
        "rejected": len(rejects),
        "rejects_by_reason": dict(sorted(reasons.items())),
        "rejects": rejects[:LISTED_REJECTS],
        "shared_keys": {"count": len(shared), "examples": dict(list(shared.items())[:10])},
        "corrupt_tars": {name: scan.error for name, scan in scans.items() if scan.error is not None},
        "validated": validate,
    }


def summary_lines(report: dict[str, Any], folder: Path) -> list[str]:
    lines = [f"scanned {report['scanned']} = indexed {report['indexed']} + rejected {report['rejected']}"]
    lines += [f"  rejected {count:6d}  {reason}" for reason, count in report["rejects_by_reason"].items()]
    shared = report["shared_keys"]
    if shared["count"]:
        example, names = next(iter(shared["examples"].items()))
        lines.append(f"  shared   {shared['count']:6d}  keys in more than one tar (e.g. {example!r} in {names})")
    lines.append(f"index: {folder / INDEX_NAME}  ({report['tars'] - len(report['corrupt_tars'])} tars)")
    lines.append(f"report: {folder / REPORT_NAME}")
    return lines
