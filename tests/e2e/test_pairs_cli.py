"""`python -m data_shards synth --format scores` then `pairs`, as a user runs them: worker pools, output, exit codes."""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import run_process_group

from data_shards.stream import ShardStream, StreamConfig


def run_cli(*args, cwd: Path):
    return run_process_group([sys.executable, "-m", "data_shards", *map(str, args)], dict(os.environ), 120, cwd=cwd)


@pytest.mark.multiprocess
def test_synth_then_pairs_with_workers(tmp_path):
    made = run_cli("synth", "--format", "scores", "--out", "syn", "--n", "45", "--image-size", "56", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) == {
        "format": "scores",
        "input": "syn/labels.txt",
        "image_root": "syn/Images",
        "records": 45,
    }
    arguments = ["pairs", "--scores", "syn/labels.txt", "--image-root", "syn/Images", "--folds", "3", "--seed", "7"]
    result = run_cli(
        *arguments, "--train-pairs", "60", "--val-pairs", "50", "--out", "out", "--workers", "2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "pairs: read 330 = written 330 + rejected 0" in result.stdout
    assert "fold1 train: 30 images, 60 pairs (First 20, Second 20, Similar 20), 0 rejected" in result.stdout
    stream = ShardStream(tmp_path / "out" / "fold2" / "val", config=StreamConfig(shuffle=False), rank=0, world_size=1)
    samples = list(stream)
    assert len(samples) == 50 and all(len(sample.extra["items"]) == 2 for sample in samples)


def test_bad_input_exits_2_naming_the_line(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "labels.txt").write_text("a.jpg 3.0\nb.jpg three\n")
    result = run_cli("pairs", "--scores", "labels.txt", "--image-root", "Images", "--out", "out", cwd=tmp_path)
    assert result.returncode == 2 and "labels.txt:2: score 'three' of 'b.jpg' is not a number" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run_cli(
        "pairs", "--scores", "labels.txt", "--image-root", "Images", "--val-pairs", "some", "--out", "o", cwd=tmp_path
    )
    assert result.returncode == 2 and "expected 'all' or a number of pairs" in result.stderr
