"""Image statistics of `validate` and `build` (`report.json` `stats.images`), against hand-computed values.

Four images, sizes as width x height: a 10x20 PNG, a 50x60 JPEG with a 40x10 grey PNG in the same
sample, a 30x40 PNG. Quantiles interpolate linearly between closest ranks (numpy's default): over
four sorted values, p95 lies at rank 0.95 * 3 = 2.85, i.e. v[2] + 0.85 * (v[3] - v[2]).
"""

import json
import statistics
import tarfile

import pytest
from PIL import Image

from data_shards.build import BuildConfig, build
from data_shards.cli import main
from data_shards.sample import IMAGE_TOKEN

SAMPLES = {"s1": ["a.png"], "s2": ["b.jpg", "g.png"], "s3": ["c.png"]}
IMAGES = {"a.png": ((10, 20), "RGB"), "b.jpg": ((50, 60), "RGB"), "g.png": ((40, 10), "L"), "c.png": ((30, 40), "RGB")}


def record(key: str, images: list[str]) -> dict:
    question = f"{IMAGE_TOKEN}\n" * len(images) + "What is shown?"
    return {
        "id": key,
        "image": images,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "x"}],
    }


def write_dataset(root, samples: dict[str, list[str]]):
    root.mkdir(parents=True)
    for name, (size, mode) in IMAGES.items():
        Image.new(mode, size, 128).save(root / name)
    path = root / "data.json"
    path.write_text(json.dumps([record(key, images) for key, images in samples.items()]))
    return path


def run_build(root, samples, write_shards: bool) -> dict:
    data = write_dataset(root / "raw", samples)
    config = BuildConfig(input=data, out=root / "out", workers=0, progress=False, write_shards=write_shards)
    return build(config)["stats"]["images"]


def test_image_stats_equal_hand_computed_values(tmp_path):
    images = run_build(tmp_path, SAMPLES, write_shards=True)
    assert images["count"] == 4
    assert images["width"] == {"min": 10, "median": 35, "p95": 48.5, "max": 50}  # 10 30 40 50
    assert images["height"] == pytest.approx({"min": 10, "median": 30, "p95": 57, "max": 60})  # 10 20 40 60
    assert images["aspect_ratio"] == pytest.approx({"min": 0.5, "median": 19 / 24, "p95": 3.525, "max": 4})
    assert images["megapixels"] == pytest.approx({"min": 2e-4, "median": 8e-4, "p95": 2.73e-3, "max": 3e-3})
    # x3 (RGB uint8): 600 + 9000 + 1200 + 3600; s2 holds 9000 + 1200, more than any single image
    assert images["decoded_bytes"] == {"total": 14400, "max_per_sample": 10200}
    assert images["source_formats"] == {"JPEG": 1, "PNG": 3}
    assert images["source_modes"] == {"L": 1, "RGB": 3}
    assert images["normalised"] == {"mode_l": 1}  # the grey image is written as RGB: its written bytes count
    with tarfile.open(tmp_path / "out" / "train" / "shard-000000.tar") as tar:
        written = [member.size for member in tar.getmembers() if not member.name.endswith(".json")]
    assert images["encoded_bytes"] == {"total": sum(written), "median": statistics.median(written)}
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| width (px) | 10 | 35 | 48.5 | 50 |" in markdown and "| height (px) | 10 | 30 | 57 | 60 |" in markdown
    assert "- decoded (RGB uint8): 14.1 KiB in all, at most 10.0 KiB per sample" in markdown


def test_validate_reports_the_same_stats_and_a_summary_line(tmp_path, capsys):
    run_build(tmp_path / "built", SAMPLES, write_shards=True)
    built = json.loads((tmp_path / "built" / "out" / "report.json").read_text())["stats"]["images"]
    data = write_dataset(tmp_path / "raw", SAMPLES)
    out = tmp_path / "out"
    assert main(["validate", "--input", str(data), "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text())["stats"]["images"] == built
    assert "  images: 4, 10-50 x 10-60 px (median 35 x 30), decoded RGB 14.1 KiB (at most 10.0 KiB per sample)" in (
        capsys.readouterr().out
    )


def test_no_accepted_images_reports_count_zero(tmp_path):
    images = run_build(tmp_path, {"missing": ["nope.png"], "text": []}, write_shards=False)
    assert images["count"] == 0 and images["width"] is None and images["megapixels"] is None
    assert images["decoded_bytes"] == {"total": 0, "max_per_sample": 0}  # the text-only sample decodes nothing
    assert images["encoded_bytes"] == {"total": 0, "median": None}
    assert images["source_formats"] == images["source_modes"] == {}
    assert "0 image references in the accepted samples." in (tmp_path / "out" / "report.md").read_text()


def test_short_side_from_the_command_line_shrinks_the_stored_images(tmp_path):
    data = write_dataset(tmp_path / "raw", SAMPLES)
    out = tmp_path / "out"
    assert (
        main(
            ["build", "--input", str(data), "--out", str(out), "--short-side", "20", "--workers", "0", "--no-progress"]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["short_side"] == 20
    assert report["stats"]["images"]["width"]["min"] == 10  # never enlarged: 10x20 stays
    with tarfile.open(out / "train" / "shard-000000.tar") as tar:
        sizes = sorted(Image.open(tar.extractfile(m)).size for m in tar.getmembers() if not m.name.endswith("json"))
    assert sizes == [(10, 20), (20, 24), (20, 27), (40, 10)]  # 50x60 and 30x40 shrunk; shortest sides 10 kept
