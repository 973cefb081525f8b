"""A short in-process run leaves history.png, and `RUN:best` names the checkpoint in best.json everywhere."""

import json

import pytest
from conftest import launch_training
from PIL import Image

from trainer.evaluate.model_source import find_adapter
from trainer.run_folder import RunFolder, resolve_checkpoint

pytestmark = pytest.mark.slow


def test_a_run_draws_its_history_and_names_its_best_checkpoint(tiny_llava, color_shards, tmp_path):
    run = RunFolder(tmp_path / "run")
    result = launch_training(
        "in-process",
        1,
        [
            f"model.path={tiny_llava}",
            f"data.train={color_shards / 'train'}",
            f"data.val={color_shards / 'val'}",
            f"train.output_dir={run.root}",
            "train.micro_batch_size=4",
            "train.log_every=1",
            "train.max_steps=4",
            "data.num_workers=0",
            "eval.at_start=false",
            "eval.every_steps=2",
            "eval.max_batches=1",
            "checkpoint.every_steps=2",
            "checkpoint.best_metric=eval/accuracy",
            "checkpoint.best_mode=max",
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with Image.open(run.history) as image:
        assert image.format == "PNG" and image.height > image.width  # five panels, one above the other
    best = run.checkpoint(json.loads(run.best_file.read_text())["tag"])
    assert resolve_checkpoint(f"{run.root}:best") == best.path
    assert find_adapter(tmp_path / "run:best") == best.adapter
    assert find_adapter(tmp_path / "run:latest") == find_adapter(run.root) == run.latest().adapter
