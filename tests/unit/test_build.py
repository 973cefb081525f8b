"""Every source format end to end: raw files → build → shards → stream gives back the same content,
every injected defect is rejected with its reason, and every merely unusual sample is kept."""

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from data_shards.build import BuildConfig, build
from data_shards.cli import print_summary
from data_shards.images import ImagePolicy, prepare_image
from data_shards.records import REASONS, RawSample, Reject
from data_shards.sources import open_source
from data_shards.split import SplitSpec
from data_shards.stream import ShardStream, StreamConfig
from data_shards.synthetic import FORMATS, make_dataset


def build_format(tmp_path: Path, fmt: str, **overrides):
    dataset = make_dataset(fmt, tmp_path / "raw", n=24, seed=1, defects=True)
    config = BuildConfig(
        input=dataset.input,
        out=tmp_path / "out",
        format=fmt,
        image_root=dataset.image_root,
        split=SplitSpec(),
        workers=0,
        progress=False,
        **overrides,
    )
    return dataset, build(config)


def streamed(split_dir: Path) -> list:
    stream = ShardStream(split_dir, config=StreamConfig(shuffle=False, on_corrupt="fail"), rank=0, world_size=1)
    return list(stream)


def source_samples(dataset, report) -> dict[str, RawSample]:
    """Raw samples by written key: the first with each id, and each renamed one under its derived key."""
    source = open_source(dataset.format, dataset.input, dataset.image_root)
    samples, by_origin = {}, {}
    for record in source.records():
        if isinstance(record, RawSample):
            samples.setdefault(record.key, record)
            by_origin[record.origin] = record
    renamed = report["renamed_keys"]
    assert renamed["count"] == len(renamed["examples"])
    samples.update({example["key"]: by_origin[example["origin"]] for example in renamed["examples"]})
    return samples


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt):
    dataset, report = build_format(tmp_path, fmt)
    samples = streamed(tmp_path / "out" / "train")
    assert len(samples) == report["written"] > 0
    raws = source_samples(dataset, report)
    root = open_source(fmt, dataset.input, dataset.image_root).image_root
    for sample in samples:
        raw = raws[sample.key]
        assert sample.turns == raw.turns
        assert (sample.label, sample.group, sample.source) == (raw.label, raw.group, fmt)
        assert len(sample.images) == len(raw.image_refs) == sample.placeholder_count()
        for image, ref in zip(sample.images, raw.image_refs):
            expected = prepare_image(root / ref, ImagePolicy())
            assert image.data == expected.data
            assert image.decode().size == (expected.width, expected.height)


@pytest.mark.parametrize("fmt", FORMATS)
def test_defects_rejected_and_unusual_kept(tmp_path, fmt):
    dataset, report = build_format(tmp_path, fmt)
    assert report["read"] == report["written"] + report["rejected"] == dataset.num_records
    rejects = {(stem(r.key), r.reason) for r in _rejects(tmp_path / "out")}
    assert set(dataset.defects.items()) <= rejects
    assert report["rejected"] == len(dataset.defects)
    written_keys = {stem(s.key) for s in streamed(tmp_path / "out" / "train")}
    assert set(dataset.unusual) <= written_keys


def stem(key: str) -> str:
    """Folder and manifest formats key samples by relative path; the generator names them by stem."""
    return Path(key).stem


def _rejects(out: Path):
    return [Reject(**json.loads(line)) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_every_reason_code_is_exercised(tmp_path):
    seen = Counter()
    for fmt in FORMATS:
        dataset = make_dataset(fmt, tmp_path / fmt, n=8, seed=2, defects=True)
        seen.update(dataset.defects.values())
    assert set(REASONS) - {"time_gap"} <= set(seen)  # time_gap is a split decision, not a defect


def test_unusual_samples_are_statistics(tmp_path):
    _, report = build_format(tmp_path, "llava")
    images = report["stats"]["images"]
    assert images["shared_by_several_samples"] >= 1 and images["max_samples_per_image"] >= 3
    assert images["samples_repeating_an_image"] >= 1
    assert {"mode_cmyk", "mode_p", "mode_i16", "mode_rgba", "exif_orientation"} <= set(images["normalised"])
    assert report["stats"]["text"]["non_ascii_samples"] >= 3
    assert report["stats"]["text"]["text_only_samples"] >= 1


def test_classes_report_counts_and_imbalance(tmp_path):
    _, report = build_format(tmp_path, "classes")
    classes = report["stats"]["classes"]
    assert sum(classes.values()) == report["written"]
    assert report["stats"]["imbalance_ratio"] == pytest.approx(max(classes.values()) / min(classes.values()))


def test_reencode_at_shard_time_bounds_image_size(tmp_path):
    dataset = make_dataset("llava", tmp_path / "raw", n=12, seed=0, image_size=96)
    config = BuildConfig(
        input=dataset.input,
        out=tmp_path / "out",
        image_root=dataset.image_root,
        policy=ImagePolicy(max_side=32, jpeg_quality=80),
        workers=0,
        progress=False,
    )
    build(config)
    sizes = [image.decode().size for sample in streamed(tmp_path / "out" / "train") for image in sample.images]
    assert sizes and max(max(size) for size in sizes) == 32


def test_image_split_keeps_shared_images_in_one_split(tmp_path):
    dataset = make_dataset("llava", tmp_path / "raw", n=40, seed=0, defects=True)
    config = BuildConfig(
        input=dataset.input,
        out=tmp_path / "out",
        image_root=dataset.image_root,
        split=SplitSpec.parse("train=0.7,val=0.3", by="image"),
        workers=0,
        progress=False,
    )
    build(config)
    hashes = {}
    for split in ("train", "val"):
        for sample in streamed(tmp_path / "out" / split):
            for image in sample.images:
                hashes.setdefault(hash(image.data), set()).add(split)
    assert hashes and all(len(splits) == 1 for splits in hashes.values())


def build_pairs(tmp_path: Path, dataset, split: SplitSpec) -> dict:
    config = BuildConfig(
        input=dataset.input,
        out=tmp_path / "out",
        format="pairs",
        image_root=dataset.image_root,
        split=split,
        workers=0,
        progress=False,
    )
    return build(config)


def images_in_several_splits(dataset, out: Path, splits: tuple[str, ...]) -> set[str]:
    """Independently of the build: each written key's CSV row, its images' file hashes, the splits using each."""
    rows = list(csv.DictReader(dataset.input.read_text().splitlines()))
    images = {f"row{number:06d}": (row["img1"], row["img2"]) for number, row in enumerate(rows, start=1)}
    split_of: dict[str, set[str]] = {}
    names: dict[str, set[str]] = {}
    for split in splits:
        for sample in streamed(out / split):
            for name in images[sample.key]:
                digest = hashlib.sha256((dataset.image_root / name).read_bytes()).hexdigest()
                split_of.setdefault(digest, set()).add(split)
                names.setdefault(digest, set()).add(name)
    return {" = ".join(sorted(names[d])) for d, used in split_of.items() if len(used) > 1}


@pytest.mark.parametrize("split", [SplitSpec.parse("train=0.6,val=0.4"), SplitSpec(folds=3, fold=1)])
def test_random_pair_split_reports_images_in_several_splits(tmp_path, split, capsys):
    dataset = make_dataset("pairs", tmp_path / "raw", n=40, seed=0)
    report = build_pairs(tmp_path, dataset, split)
    expected = images_in_several_splits(dataset, tmp_path / "out", ("train", "val"))
    shared = report["images_in_several_splits"]
    assert shared["count"] == len(expected) > 0
    assert set(shared["examples"]) <= expected and len(shared["examples"]) == min(10, len(expected))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["images_in_several_splits"] == shared
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"warning: {len(expected)} images" in markdown and "python -m data_shards pairs --scores" in markdown
    assert "--split-by image" in markdown
    print_summary(report, tmp_path / "out")
    assert f"warning: {len(expected)} images" in capsys.readouterr().err


def test_disjoint_pair_images_report_no_overlap(tmp_path):
    dataset = make_dataset("pairs", tmp_path / "raw", n=40, seed=0)
    lines = dataset.input.read_text().splitlines()
    rows = list(csv.DictReader(lines))
    counts = Counter(name for row in rows for name in (row["img1"], row["img2"]))
    disjoint = [line for line, row in zip(lines[1:], rows) if counts[row["img1"]] == counts[row["img2"]] == 1]
    dataset.input.write_text("\n".join([lines[0], *disjoint]) + "\n")
    report = build_pairs(tmp_path, dataset, SplitSpec.parse("train=0.6,val=0.4"))
    assert report["splits"]["val"]["samples"] > 0
    assert report["images_in_several_splits"] == {"count": 0, "examples": []}
    assert "warning" not in (tmp_path / "out" / "report.md").read_text()
