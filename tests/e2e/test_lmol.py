"""Seed 001 (LMOL) end to end on its synthetic analogue, with the README's three commands: pairs from a score
list in leakage-free folds, every fold trained on 2 ranks with the choice objective and swap consistency, each
fold's best checkpoint evaluated (choice accuracy, swap consistency, Bradley–Terry vs the true scores), aggregated.

The analogue: one square per image whose side sets the hidden score (plus noise), so "which is larger" is learnable
by the tiny model at 56 px; chance is about 1/3 over First / Second / Similar.
"""

import json
import sys

import pytest
from conftest import ROOT, run_process_group, training_env

from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
FOLDS = 2
TRAINING = [
    "model.dtype=float32",
    "train.precision=fp32",
    "train.micro_batch_size=8",
    "train.grad_accum=1",
    "train.max_steps=80",
    "train.log_every=10",
    "optimizer.lr=3e-3",
    "optimizer.projector_lr=3e-3",
    "optimizer.warmup_steps=5",
    "eval.at_start=true",
    "eval.every_steps=40",
    "eval.max_batches=20",
    "tracking.wandb=disabled",
    "data.num_workers=1",
    "checkpoint.every_steps=40",
]


def run(*argv: str, timeout: int = 600):
    result = run_process_group([sys.executable, *argv], training_env(), timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def lmol(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmol")
    model = build_tiny_model("llava", root / "model", image_size=SMALL_IMAGE)
    run("-m", "data_shards", "synth", "--format", "scores", "--out", str(root / "raw"), "--n", "120")
    run(
        "-m",
        "data_shards",
        "pairs",
        "--scores",
        str(root / "raw/labels.txt"),
        "--image-root",
        str(root / "raw/Images"),
        "--folds",
        str(FOLDS),
        "--out",
        str(root / "folds"),
        "--train-pairs",
        "600",
        "--similar-margin",
        "0.3",
        "--no-progress",
    )
    run(
        str(ROOT / "launch/kfold.py"),
        "train",
        "--config",
        str(ROOT / "configs/lmol-pairs.yaml"),
        "--fold-root",
        str(root / "folds"),
        "--folds",
        str(FOLDS),
        "--out",
        str(root / "runs"),
        "--ranks",
        "2",
        f"model.path={model}",
        *TRAINING,
        timeout=900,
    )
    run(
        str(ROOT / "launch/kfold.py"),
        "evaluate",
        "--runs",
        str(root / "runs"),
        "--fold-root",
        str(root / "folds"),
        "--folds",
        str(FOLDS),
        "--out",
        str(root / "eval"),
        "--batch-size",
        "16",
    )
    return root


def test_folds_are_leakage_free(lmol):
    summary = json.loads((lmol / "folds/folds.json").read_text())
    assert summary["guarantee"]["train_val_disjoint"] and summary["guarantee"]["every_image_in_exactly_one_val_fold"]


def test_every_fold_learns_from_chance_with_the_choice_objective(lmol):
    for k in range(FOLDS):
        summary = json.loads((lmol / f"runs/fold{k}/train_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == 80
        # before training the model answers one class: its share of the evaluated val pairs (every pair of the
        # held-out images, few of them Similar), about a half; the strips each rank evaluates move it by a few points
        assert summary["accuracy_before"] < 0.6 and summary["accuracy_after"] >= 0.8, summary
        assert summary["accuracy_after"] - summary["accuracy_before"] >= 0.25, summary
        lines = [json.loads(line) for line in (lmol / f"runs/fold{k}/metrics.jsonl").read_text().splitlines()]
        logged = next(line for line in lines if "train/loss_ce" in line)
        assert {"train/loss_consistency", "train/accuracy"} <= set(logged)


def test_each_fold_report_scores_choices_swaps_and_bradley_terry(lmol):
    for k in range(FOLDS):
        report = json.loads((lmol / f"eval/fold{k}/report.json").read_text())
        assert report["num_samples"] == 60 * 59 // 2  # every pair of the fold's 60 held-out images
        assert report["choice_accuracy"] >= 0.8 and report["swap_consistency"] >= 0.8
        assert report["bt_spearman"] >= 0.8 and report["bt_pearson"] >= 0.8
        assert (lmol / f"eval/fold{k}/bt_scatter.png").stat().st_size > 0


def test_the_aggregate_is_the_mean_over_folds(lmol):
    aggregate = json.loads((lmol / "eval/summary.json").read_text())
    reports = [json.loads((lmol / f"eval/fold{k}/report.json").read_text()) for k in range(FOLDS)]
    mean = sum(r["bt_spearman"] for r in reports) / FOLDS
    assert aggregate["metrics"]["bt_spearman"]["mean"] == pytest.approx(mean)
