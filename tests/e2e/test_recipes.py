"""Each seed workflow's recipe runs for real (a few steps) on a tiny model of its family and synthetic data
of its dataset format: only the model, the paths and CPU-sized batch settings are overridden."""

import json

import pytest
from conftest import ROOT, launch_training

from data_shards.build import BuildConfig, build
from data_shards.split import SplitSpec
from data_shards.synthetic import make_dataset
from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model

pytestmark = [pytest.mark.slow]

RECIPES = {
    "plants-llava-next.yaml": ("llava_next", "classes"),
    "lmol-pairs.yaml": ("llava", "pairs"),
    "sam2-coco.yaml": ("qwen2_vl", "coco"),
    "llava-finetune.yaml": ("llava", "llava"),
    "captions.yaml": ("llava", "captions"),
}
CPU_SIZED = [
    "model.dtype=float32",
    "train.precision=fp32",
    "train.micro_batch_size=2",
    "train.grad_accum=1",
    "train.max_steps=3",
    "eval.max_batches=1",
    "eval.max_new_tokens=2",
    "tracking.wandb=disabled",
    "data.num_workers=0",
    "checkpoint.every_steps=0",
]


def test_every_recipe_is_covered():
    assert set(RECIPES) | {"demo.yaml"} == {p.name for p in (ROOT / "configs").glob("*.yaml")}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs(recipe, tmp_path):
    family, fmt = RECIPES[recipe]
    model = build_tiny_model(family, tmp_path / "model", image_size=SMALL_IMAGE)
    dataset = make_dataset(fmt, tmp_path / "raw", n=24, seed=0)
    build(
        BuildConfig(
            input=dataset.input,
            out=tmp_path / "shards",
            format=fmt,
            image_root=dataset.image_root,
            split=SplitSpec.parse("train=0.75,val=0.25"),
            workers=0,
            progress=False,
        )
    )
    run = tmp_path / "run"
    result = launch_training(
        "in-process",
        1,
        [
            f"model.path={model}",
            f"data.train={tmp_path / 'shards/train'}",
            f"data.val={tmp_path / 'shards/val'}",
            f"train.output_dir={run}",
            *CPU_SIZED,
        ],
        recipe=ROOT / "configs" / recipe,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["eval_loss_after"] == summary["eval_loss_after"]  # not NaN
