"""The build report: counts that reconcile (read = written + rejected), reasons, and dataset statistics.

Unusual-but-valid properties (shared images, an image used twice in one sample, normalised
colour modes, non-ASCII text, ids repeated with different content) are statistics here, never rejections.
Images used in more than one split are counted and warned about, never refused: merely unusual for
captions sharing an image, but leakage that inflates validation accuracy when pairs were split, not images.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from data_shards.notes import annotation_stats, note_lines
from data_shards.records import REASONS, Reject
from data_shards.validate import CheckedSample, ImageInfo
from data_shards.write import ShardInfo

SHARED_EXAMPLES = 10
QUANTILES = ("min", "median", "p95", "max")
SIZE_ROWS = (
    ("width", "width (px)"),
    ("height", "height (px)"),
    ("aspect_ratio", "aspect ratio (w/h)"),
    ("megapixels", "megapixels"),
)


class ReconciliationError(AssertionError):
    pass


def build_report(
    read: int,
    kept: list[CheckedSample],
    rejects: list[Reject],
    splits: dict[str, list[CheckedSample]],
    shards: dict[str, list[ShardInfo]],
    header: dict[str, Any],
    keys: dict[str, Any],
) -> dict[str, Any]:
    """`keys`: `Deduped.summary()` (repeated ids renamed, exact duplicates kept)."""
    report = {
        "read": read,
        "written": len(kept),
        "rejected": len(rejects),
        "shards_written": bool(shards),
        "rejects_by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "splits": split_summary(splits, shards),
        "images_in_several_splits": images_in_several_splits(splits),
        "stats": dataset_stats(kept),
        **keys,
        **header,
    }
    check_reconciled(report, splits, shards)
    return report


def check_reconciled(report: dict[str, Any], splits: dict, shards: dict) -> None:
    if report["read"] != report["written"] + report["rejected"]:
        raise ReconciliationError(
            f"read {report['read']} != written {report['written']} + rejected {report['rejected']}"
        )
    keys = [m.raw.key for members in splits.values() for m in members]
    if len(set(keys)) != len(keys):
        raise ReconciliationError(f"{len(keys) - len(set(keys))} written samples share a key")
    if len(keys) != report["written"]:
        raise ReconciliationError(f"splits hold {len(keys)} samples, expected {report['written']}")
    for name, infos in shards.items():
        if sum(info.samples for info in infos) != len(splits[name]):
            raise ReconciliationError(
                f"split {name}: shards hold {sum(i.samples for i in infos)} of {len(splits[name])}"
            )


def split_summary(splits: dict[str, list[CheckedSample]], shards: dict[str, list[ShardInfo]]) -> dict[str, Any]:
    summary = {}
    for name, members in splits.items():
        infos = shards.get(name, [])
        summary[name] = {
            "samples": len(members),
            "shards": len(infos),
            "bytes": sum(info.bytes for info in infos),
            "labels": dict(sorted(Counter(m.raw.label for m in members if m.raw.label is not None).items())),
        }
    return summary


def images_in_several_splits(splits: dict[str, list[CheckedSample]]) -> dict[str, Any]:
    """Images (by content hash) used by samples of more than one split, each named by its paths joined by ' = '."""
    split_names: dict[str, set[str]] = defaultdict(set)
    refs: dict[str, set[str]] = defaultdict(set)
    for name, members in splits.items():
        for sample in members:
            for image in sample.images:
                split_names[image.source_sha256].add(name)
                refs[image.source_sha256].add(image.ref)
    shared = sorted(" = ".join(sorted(refs[digest])) for digest, names in split_names.items() if len(names) > 1)
    return {"count": len(shared), "examples": shared[:SHARED_EXAMPLES]}


def split_overlap_warning(report: dict[str, Any]) -> str | None:
    """A warning naming how many images straddle splits (None when none do); for pairs, how to avoid it."""
    shared = report["images_in_several_splits"]["count"]
    if not shared:
        return None
    text = f"warning: {shared} images are used by samples in more than one split"
    if report["source"]["format"] == "pairs":
        return text + (
            ": the pairs were split, not the images, so validation pairs show images seen in training and "
            "pairwise accuracy is inflated. For leakage-free folds of images use `python -m data_shards pairs "
            "--scores ...`, or build with `--split-by image` (each image in one split; a connected pair graph "
            "may then fall into a single split)"
        )
    return text + " (usual when captions or conversations share an image; `--split-by image` keeps each in one split)"


def distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return {
        "min": float(array.min()),
        "median": float(np.median(array)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def dataset_stats(kept: list[CheckedSample]) -> dict[str, Any]:
    labels = Counter(s.raw.label for s in kept if s.raw.label is not None)
    return {
        "classes": dict(sorted(labels.items())),
        "imbalance_ratio": max(labels.values()) / min(labels.values()) if labels else None,
        "images": image_stats(kept),
        "text": text_stats(kept),
        **annotation_stats(kept),
    }


def image_stats(kept: list[CheckedSample]) -> dict[str, Any]:
    infos = [info for sample in kept for info in sample.images]
    uses = Counter(info.source_sha256 for info in infos)
    samples_per_image = Counter()
    for sample in kept:
        samples_per_image.update({info.source_sha256 for info in sample.images})
    return {
        "references": len(infos),
        "distinct": len(uses),
        "shared_by_several_samples": sum(1 for count in samples_per_image.values() if count > 1),
        "max_samples_per_image": max(samples_per_image.values(), default=0),
        "samples_repeating_an_image": sum(1 for s in kept if len({i.source_sha256 for i in s.images}) < len(s.images)),
        "per_sample": dict(sorted(Counter(len(s.images) for s in kept).items())),
        **size_stats(kept, infos),
        "formats": dict(sorted(Counter(i.format for i in infos).items())),
        "normalised": dict(sorted(Counter(change for i in infos for change in i.changes).items())),
    }


def size_stats(kept: list[CheckedSample], infos: list[ImageInfo]) -> dict[str, Any]:
    """Sizes, decoded memory and encoded bytes of the accepted images, from what the image check recorded.

    Sizes and bytes are those written to the shards (after EXIF rotation and any `--max-side` resize);
    `source_formats`/`source_modes` are the files' own. Every reference counts (`count`: an image used by
    two samples twice, as a loader decodes it twice). p95 is numpy's default linear interpolation between
    closest ranks. Decoded memory is width x height x 3 bytes (RGB uint8); a sample's is the sum over its images.
    """
    encoded = [i.num_bytes for i in infos]
    return {
        "count": len(infos),
        "width": distribution([i.width for i in infos]),
        "height": distribution([i.height for i in infos]),
        "aspect_ratio": distribution([i.width / i.height for i in infos]),
        "megapixels": distribution([i.width * i.height / 1e6 for i in infos]),
        "decoded_bytes": {
            "total": sum(decoded_bytes(i) for i in infos),
            "max_per_sample": max((sum(decoded_bytes(i) for i in s.images) for s in kept), default=0),
        },
        "encoded_bytes": {"total": sum(encoded), "median": float(np.median(encoded)) if encoded else None},
        "source_formats": dict(sorted(Counter(i.source_format for i in infos).items())),
        "source_modes": dict(sorted(Counter(i.source_mode for i in infos).items())),
    }


def decoded_bytes(info: ImageInfo) -> int:
    return info.width * info.height * 3


def text_stats(kept: list[CheckedSample]) -> dict[str, Any]:
    lengths = [sum(len(t.text) for t in s.raw.turns) for s in kept]
    return {
        "chars_per_sample": distribution(lengths),
        "turns_per_sample": distribution([len(s.raw.turns) for s in kept]),
        "text_only_samples": sum(1 for s in kept if not s.images),
        "non_ascii_samples": sum(1 for s in kept if any(not t.text.isascii() for t in s.raw.turns)),
    }


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")


def source_split(report: dict[str, Any]) -> bool:
    """Whether the build kept the source's own splits (`--split-by source`)."""
    split = report.get("options", {}).get("split")
    return isinstance(split, dict) and split.get("by") == "source"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Dataset build report",
        "",
        f"Source format `{report['source']['format']}`, seed {report['seed']}"
        + (", splits as the source gives them (not re-split)." if source_split(report) else "."),
        "",
        f"**read {report['read']} = written {report['written']} + rejected {report['rejected']}**",
        "",
        "| split | samples | shards | bytes |",
        "|---|---:|---:|---:|",
    ]
    for name, split in report["splits"].items():
        lines.append(f"| {name} | {split['samples']} | {split['shards']} | {split['bytes']} |")
    warning = split_overlap_warning(report)
    if warning:
        examples = ", ".join(f"`{e}`" for e in report["images_in_several_splits"]["examples"])
        lines += ["", f"**{warning}.** Examples: {examples}"]
    lines += ["", "## Rejected", "", "| reason | count | meaning |", "|---|---:|---|"]
    for reason, count in report["rejects_by_reason"].items():
        lines.append(f"| `{reason}` | {count} | {REASONS[reason]} |")
    lines += ["", "Every rejected sample is listed in `rejects.jsonl`.", ""] + key_lines(report)
    lines += ["## Statistics", ""]
    stats = report["stats"]
    if stats["classes"]:
        lines.append(
            f"- classes: {len(stats['classes'])}, imbalance ratio (largest/smallest) {stats['imbalance_ratio']:.2f}"
        )
    images = stats["images"]
    lines.append(
        f"- images: {images['references']} references to {images['distinct']} distinct images; "
        f"{images['shared_by_several_samples']} shared by several samples "
        f"(at most {images['max_samples_per_image']}); "
        f"{images['samples_repeating_an_image']} samples use an image twice"
    )
    if images["normalised"]:
        lines.append("- normalised (kept): " + ", ".join(f"{k} {v}" for k, v in images["normalised"].items()))
    text = stats["text"]
    lines.append(
        f"- text: {text['text_only_samples']} text-only samples, {text['non_ascii_samples']} with non-ASCII text"
    )
    return "\n".join(lines + note_lines(stats) + size_lines(images)) + "\n"


def size_lines(images: dict[str, Any]) -> list[str]:
    """report.md's image table: sizes, aspect ratio and megapixels; decoded and encoded bytes; formats, modes."""
    lines = ["", "### Images", "", f"{images['count']} image references in the accepted samples."]
    if not images["count"]:
        return lines
    lines += ["", "| | min | median | p95 | max |", "|---|---:|---:|---:|---:|"]
    for key, name in SIZE_ROWS:
        lines.append(f"| {name} | " + " | ".join(f"{images[key][q]:.4g}" for q in QUANTILES) + " |")
    decoded, encoded = images["decoded_bytes"], images["encoded_bytes"]
    return lines + [
        "",
        f"- decoded (RGB uint8): {human_bytes(decoded['total'])} in all, "
        f"at most {human_bytes(decoded['max_per_sample'])} per sample",
        f"- encoded: {human_bytes(encoded['total'])} in all, median {human_bytes(encoded['median'])} per image",
        "- source formats: " + ", ".join(f"{k} {v}" for k, v in images["source_formats"].items()),
        "- source modes: " + ", ".join(f"{k} {v}" for k, v in images["source_modes"].items()),
    ]


def image_summary(images: dict[str, Any]) -> str:
    """One line for the CLI: how many images, their size range, decoded and encoded bytes."""
    if not images["count"]:
        return "images: 0"
    width, height, decoded = images["width"], images["height"], images["decoded_bytes"]
    return (
        f"images: {images['count']}, {width['min']:.0f}-{width['max']:.0f} x "
        f"{height['min']:.0f}-{height['max']:.0f} px "
        f"(median {width['median']:.0f} x {height['median']:.0f}), decoded RGB {human_bytes(decoded['total'])} "
        f"(at most {human_bytes(decoded['max_per_sample'])} per sample), "
        f"encoded {human_bytes(images['encoded_bytes']['total'])}"
    )


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def key_lines(report: dict[str, Any]) -> list[str]:
    """Repeated ids kept under derived keys, and exact duplicates kept by `--keep-duplicates`."""
    renamed = report["renamed_keys"]
    lines = [
        f"Samples repeating an earlier id, written under derived keys: {renamed['count']} "
        f"({renamed['repeated_ids']} ids). Exact duplicates kept: {report['kept_duplicates']}.",
        "",
    ]
    lines += [f"- `{e['id']}` → `{e['key']}` ({e['origin']})" for e in renamed["examples"]]
    return ["## Keys", "", *lines, ""]
