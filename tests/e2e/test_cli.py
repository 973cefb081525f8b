"""The command line as users (and the outside contract) call it: exit codes, report files, counts."""

import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import run_process_group
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def record(key, image, question="<image>\nWhat colour?", answer="red"):
    rec = {"id": key, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    return rec


@pytest.fixture
def llava_dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(30):
        Image.new("RGB", (16, 16), (i * 8, 100, 50)).save(images / f"{i}.jpg")
    (images / "empty.jpg").write_bytes(b"")
    records = [record(f"k{i}", f"images/{i}.jpg") for i in range(30)]
    records += [
        record("missing", "images/nope.jpg"),
        record("empty", "images/empty.jpg"),
        record("noanswer", "images/1.jpg", answer="  "),
        record("escape", "../secret.jpg"),
        record("k3", "images/4.jpg", answer="blue"),
        record("copy", "images/5.jpg"),
        record("text-only", None, question="Say hi", answer="hi"),
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    return data, tmp_path


def run_cli(*args, cwd=ROOT):
    """`python -m data_shards ...` (a build starts worker processes): a timeout kills them all."""
    return run_process_group([sys.executable, "-m", "data_shards", *map(str, args)], dict(os.environ), 120, cwd=cwd)


def tar_sample_count(path: Path) -> int:
    with tarfile.open(path) as tar:
        return sum(1 for member in tar.getmembers() if member.name.endswith(".json"))


@pytest.mark.multiprocess
def test_build_contract(llava_dataset, tmp_path):
    data, root = llava_dataset
    out = tmp_path / "out"
    result = run_cli(
        "build",
        "--format",
        "llava",
        "--input",
        data,
        "--image-root",
        root,
        "--out",
        out,
        "--split",
        "train=0.9,val=0.1",
        "--seed",
        "0",
        "--shard-samples",
        "7",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert (report["read"], report["written"], report["rejected"]) == (37, 32, 5)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {(r["key"], r["reason"]) for r in rejects} == {
        ("missing", "missing_image"),
        ("empty", "zero_byte_image"),
        ("noanswer", "empty_answer"),
        ("escape", "path_escapes_root"),
        ("copy", "duplicate_sample"),
    }
    assert [(e["id"], e["key"][:3]) for e in report["renamed_keys"]["examples"]] == [("k3", "k3#")]
    for split in ("train", "val"):
        index = json.loads((out / split / "index.json").read_text())
        for shard in index["shards"]:
            assert tar_sample_count(out / split / shard["name"]) == shard["samples"]
            assert hashlib.sha256((out / split / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
        assert index["num_samples"] == sum(s["samples"] for s in index["shards"]) == report["splits"][split]["samples"]
        assert index["seed"] == 0 and index["source"]["fingerprint"] == report["source"]["fingerprint"]
        stats = index["stats"]
        assert stats["images"]["references"] == index["num_samples"] - stats["text"]["text_only_samples"]
    assert report["splits"]["train"]["samples"] + report["splits"]["val"]["samples"] == 32
    assert "read 37 = written 32 + rejected 5" in (out / "report.md").read_text()


def test_missing_input_fails_with_one_line_naming_the_file(tmp_path):
    result = run_cli("build", "--format", "llava", "--input", tmp_path / "DATA.json", "--out", tmp_path / "o")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "DATA.json" in result.stderr


def test_non_json_input_fails_with_one_line_naming_the_file(tmp_path):
    data = tmp_path / "DATA.json"
    data.write_text("this is not json\nat all\n")
    result = run_cli("build", "--format", "llava", "--input", data, "--out", tmp_path / "o")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "DATA.json" in result.stderr and "JSON" in result.stderr


def test_non_empty_output_is_not_overwritten_silently(llava_dataset, tmp_path):
    data, root = llava_dataset
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("build", "--input", data, "--out", out, "--workers", "0", "--no-progress")
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.multiprocess
def test_rebuild_is_byte_identical_whatever_the_worker_count(llava_dataset, tmp_path):
    data, root = llava_dataset
    outputs = []
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        result = run_cli(
            "build",
            "--input",
            data,
            "--out",
            out,
            "--split",
            "train=0.7,val=0.3",
            "--shard-samples",
            "4",
            "--workers",
            workers,
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
        outputs.append(
            {
                p.relative_to(out): p.read_bytes()
                for p in out.rglob("*")
                if p.suffix in (".tar", ".json") and p.name != "report.json"
            }
        )
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) > 4
    assert outputs[0] == outputs[1]


def test_validate_writes_a_report_without_shards(llava_dataset, tmp_path):
    data, _ = llava_dataset
    out = tmp_path / "report"
    result = run_cli("validate", "--input", data, "--out", out, "--workers", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["read"] == report["written"] + report["rejected"] == 37
    assert not list(out.rglob("*.tar"))


def test_every_command_has_help():
    for command in ("build", "validate", "inspect", "synth"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "usage" in result.stdout


def test_inspect_prints_counts_samples_and_writes_a_contact_sheet(llava_dataset, tmp_path):
    data, _ = llava_dataset
    out = tmp_path / "out"
    assert (
        run_cli(
            "build", "--input", data, "--out", out, "--split", "train=0.8,val=0.2", "--workers", "0", "--no-progress"
        ).returncode
        == 0
    )
    sheet = tmp_path / "sheet.png"
    result = run_cli("inspect", out, "--samples", "2", "--contact-sheet", sheet)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert f"train: {report['splits']['train']['samples']} samples" in result.stdout
    assert result.stdout.count("assistant:") == 4
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width >= 128
