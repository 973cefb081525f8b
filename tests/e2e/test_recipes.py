"""Each seed workflow's recipe learns its synthetic analogue on a tiny model of its family, and trains with its own
features as the run reports them (`recipe_probe`): 4-bit layers, per-part learning rates, the objective, the ZeRO
stage, LoRA on or off, the family and the input format.

Only the model, the data paths and CPU-sized settings are overridden: fp32, batch, steps, warmup, learning rates,
evaluation before the first step, no W&B. The recipes' rates are for 7B checkpoints: a tiny random model learns in a
few dozen steps only at rates 12 to 60 times higher (a separate projector rate stays separate). The measured figures
are in README.md ("Recipes").
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, launch_training
from recipe_probe import CALLBACK, FILE_NAME

from data_shards.build import BuildConfig, build
from data_shards.pairs import PairSettings, PairsJob, pairs_from_scores
from data_shards.sources import SourceOptions
from data_shards.split import SplitSpec
from data_shards.stream import ShardStream, StreamConfig
from data_shards.synthetic import make_dataset
from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model

pytestmark = [pytest.mark.slow]

RECIPES = ("plants-llava-next.yaml", "lmol-pairs.yaml", "sam2-coco.yaml", "llava-finetune.yaml", "captions.yaml")
CPU_SIZED = [
    "model.dtype=float32",  # bf16 is slow on most CPUs
    "train.precision=fp32",
    "train.grad_accum=1",
    "optimizer.warmup_steps=4",
    "train.log_every=10",
    "eval.at_start=true",
    "tracking.wandb=disabled",
    "data.num_workers=0",
    "checkpoint.every_steps=0",
]
LOSS_FALL = 0.3  # the held-out loss after is below this fraction of the loss before; at lr≈0 it stays put
BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


@dataclass
class Run:
    summary: dict
    probe: dict
    eval_loss_before: float


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe-models")
    return lambda family: build_tiny_model(family, root / family, image_size=SMALL_IMAGE)


def build_shards(fmt: str, root: Path, n: int, split_by: str = "random", options: SourceOptions | None = None) -> Path:
    """A synthetic dataset in `fmt`, built into train (3/4) and val (1/4) shards, split as the recipe's data
    command splits (`--split-by`)."""
    dataset = make_dataset(fmt, root / "raw", n=n, seed=0)
    build(
        BuildConfig(
            input=dataset.input,
            out=root / "shards",
            format=fmt,
            image_root=dataset.image_root,
            split=SplitSpec.parse("train=0.75,val=0.25", by=split_by),
            options=options or SourceOptions(),
            workers=0,
            progress=False,
        )
    )
    return root / "shards"


def lmol_fold(root: Path) -> Path:
    """`data_shards pairs` on a SCUT-FBP5500 analogue (one square per image, its side sets the score), 2 folds:
    fold 1 trains on 600 pairs of one half's images and validates on 48 pairs of the other half's."""
    scores = make_dataset("scores", root / "raw", n=120, seed=0)
    pairs_from_scores(
        scores.input,
        PairSettings(folds=2, train_pairs=600, margin=0.3, val_pairs=48),
        PairsJob(image_root=scores.image_root, out=root / "folds", progress=False),
    )
    return root / "folds" / "fold1"


def train_recipe(recipe: str, model: Path, shards: Path, run_dir: Path, cpu_sized: list[str]) -> Run:
    result = launch_training(
        "in-process",
        1,
        [
            f"model.path={model}",
            f"data.train={shards / 'train'}",
            f"data.val={shards / 'val'}",
            f"train.output_dir={run_dir}",
            f"train.callbacks=[{CALLBACK}]",
            *CPU_SIZED,
            *cpu_sized,
        ],
        recipe=ROOT / "configs" / recipe,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return Run(summary, json.loads((run_dir / FILE_NAME).read_text()), summary["eval_loss_before"])


def assert_learned(run: Run, min_accuracy: float | None = None) -> None:
    """The held-out loss falls clearly; where exact match is within a tiny model's reach, accuracy rises to
    `min_accuracy` from below it."""
    before, after = run.eval_loss_before, run.summary["eval_loss_after"]
    assert after < LOSS_FALL * before, f"eval loss {before:.3f} → {after:.3f}"
    if min_accuracy is not None:
        assert run.summary["accuracy_before"] < min_accuracy <= run.summary["accuracy_after"], run.summary


def learning_rates_by_part(probe: dict) -> dict[str, set[float]]:
    """The optimizer's peak rates by model part, its groups with and without weight decay taken together."""
    rates: dict[str, set[float]] = {}
    for group, rate in probe["group_lrs"].items():
        rates.setdefault(group.removesuffix("_no_decay"), set()).add(rate)
    return rates


def assert_lora_under_zero2(probe: dict) -> None:
    """Adapters on the language model and the projector in full, nothing else trained; ZeRO-2."""
    assert probe["lora"] and probe["zero_stage"] == 2
    assert set(probe["trainable"]) == {"lora", "projector"}, probe["trainable"]


def training_turns(shards: Path):
    stream = ShardStream(shards / "train", config=StreamConfig(shuffle=False, decode=False))
    return [turn for sample in stream for turn in sample.turns]


def test_every_recipe_is_covered():
    assert set(RECIPES) | {"demo.yaml"} == {p.name for p in (ROOT / "configs").glob("*.yaml")}


def test_plants_learns_its_classes_with_qlora_on_llava_next(tiny_model, tmp_path):
    question = SourceOptions(class_question="<image>\nWhat species of flower is this?")
    shards = build_shards("classes", tmp_path, 96, split_by="label", options=question)
    cpu_sized = ["train.micro_batch_size=4", "train.max_steps=80", "eval.max_new_tokens=2"]
    cpu_sized += ["optimizer.lr=3e-3", "optimizer.projector_lr=6e-4"]  # the recipe's × 30
    if not BITSANDBYTES:
        cpu_sized.append("quant.load_in_4bit=false")
    run = train_recipe("plants-llava-next.yaml", tiny_model("llava_next"), shards, tmp_path / "run", cpu_sized)
    assert_learned(run, min_accuracy=0.75)  # 6 classes
    probe = run.probe
    assert probe["model_type"] == "llava_next" and probe["train_format"] == "classes"
    assert_lora_under_zero2(probe)
    assert learning_rates_by_part(probe) == {"language": {3e-3}, "projector": {6e-4}}
    if not BITSANDBYTES:
        pytest.skip("bitsandbytes is not importable: trained without 4-bit, its layers not checked")
    assert probe["four_bit_layers"] > 0


def test_lmol_pairs_learns_which_square_is_larger_with_the_choice_objective(tiny_llava, tmp_path):
    cpu_sized = ["train.micro_batch_size=16", "train.max_steps=80"]
    cpu_sized += ["optimizer.lr=3e-3", "optimizer.projector_lr=6e-3"]  # the recipe's × 60 and × 12
    run = train_recipe("lmol-pairs.yaml", tiny_llava, lmol_fold(tmp_path), tmp_path / "run", cpu_sized)
    assert_learned(run, min_accuracy=0.7)  # choice accuracy over First / Second / Similar
    probe = run.probe
    assert probe["model_type"] == "llava" and probe["train_format"] == "pairs"
    assert probe["objective"] == {"name": "ChoiceLoss", "swap_weight": 1.0}
    assert_lora_under_zero2(probe)
    assert learning_rates_by_part(probe) == {"language": {3e-3}, "projector": {6e-3}}


def test_sam2_coco_learns_objects_counts_and_boxes_on_qwen2_vl(tiny_model, tmp_path):
    shards = build_shards("coco", tmp_path, 64, split_by="group")
    cpu_sized = ["train.micro_batch_size=4", "train.max_steps=60", "eval.max_new_tokens=2"]
    cpu_sized += ["optimizer.lr=3e-3"]  # the recipe's × 15
    questions = [turn.text for turn in training_turns(shards) if turn.role == "user"]
    for asked in ("Which objects are in the image?", "How many ", "Where is the "):  # every answer is trained
        assert any(asked in question for question in questions), asked
    run = train_recipe("sam2-coco.yaml", tiny_model("qwen2_vl"), shards, tmp_path / "run", cpu_sized)
    assert_learned(run)  # exact match is on the last answer, a box: out of a tiny model's reach
    probe = run.probe
    assert probe["model_type"] == "qwen2_vl" and probe["train_format"] == "coco"
    assert_lora_under_zero2(probe)


def test_llava_finetune_learns_in_full_under_zero3(tiny_llava, tmp_path):
    shards = build_shards("llava", tmp_path, 96, split_by="image")
    cpu_sized = ["train.micro_batch_size=8", "train.max_steps=80", "eval.max_new_tokens=2"]
    cpu_sized += ["optimizer.lr=1e-3"]  # the recipe's × 50
    run = train_recipe("llava-finetune.yaml", tiny_llava, shards, tmp_path / "run", cpu_sized)
    assert_learned(run, min_accuracy=0.75)  # 6 colours
    probe = run.probe
    assert probe["model_type"] == "llava" and probe["train_format"] == "llava"
    assert probe["zero_stage"] == 3 and not probe["lora"] and probe["four_bit_layers"] == 0
    assert probe["trainable"]["language"] > 0 and probe["trainable"]["projector"] > 0
    assert "vision" not in probe["trainable"]


@pytest.mark.parametrize("fmt", ["captions", "manifest"])
def test_captions_learns_from_caption_folders_and_manifests(tiny_llava, tmp_path, fmt):
    shards = build_shards(fmt, tmp_path, 96)
    cpu_sized = ["train.micro_batch_size=8", "train.max_steps=80", "eval.max_new_tokens=12"]
    cpu_sized += ["optimizer.lr=3e-3"]  # the recipe's × 30
    run = train_recipe("captions.yaml", tiny_llava, shards, tmp_path / "run", cpu_sized)
    assert_learned(run)  # a whole caption's exact match is rare at this size
    probe = run.probe
    assert probe["model_type"] == "llava" and probe["train_format"] == fmt
    assert_lora_under_zero2(probe)
