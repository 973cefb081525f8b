"""Text-only and image samples in any mix across ranks: every rank runs the same modules in every micro-step.

Without the blank image (`trainer.batches.blank_image`) a rank whose micro-batch has no image skips the vision tower
and projector while its peer runs them: ZeRO-2's gradient reduction and ZeRO-3's parameter all-gathers then
disagree ("collective mismatch" on gloo, a hang on NCCL). The reference is one rank with gradient accumulation
2: it reads the same samples per optimizer step (one global order per epoch) and needs no blank image.
"""

import json
from pathlib import Path

import pytest
from conftest import ROOT, launch_training, train_losses

from data_shards.stream import ShardStream, StreamConfig

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
STEPS = 40


def overrides(model: Path, shards: Path, run: Path, zero: int, *extra: str) -> list[str]:
    json_stage = 3 if zero == 3 else 2
    return [
        f"model.path={model}",
        f"data.train={shards / 'train'}",
        f"data.val={shards / 'val'}",
        f"train.output_dir={run}",
        "train.micro_batch_size=1",
        f"train.max_steps={STEPS}",
        "train.log_every=1",
        "data.num_workers=1",
        "eval.at_start=true",
        "eval.batch_size=8",
        "optimizer.lr=3e-3",
        "optimizer.projector_lr=3e-3",
        f"deepspeed.config={ROOT}/configs/deepspeed/zero{json_stage}.json",
        f"deepspeed.zero_stage={zero}",
        *extra,
    ]


def mismatched_steps(shards: Path, ranks: int = 2) -> list[int]:
    """Optimizer steps at which one rank's micro-batch has an image and another's has none."""
    has_image = []
    for rank in range(ranks):
        stream = ShardStream(
            shards / "train",
            config=StreamConfig(batch_size=1, seed=0, shuffle=True, decode=False),
            rank=rank,
            world_size=ranks,
        )
        has_image.append([bool(sample.images) for sample in stream][:STEPS])
    return [step for step, flags in enumerate(zip(*has_image)) if len(set(flags)) > 1]


@pytest.fixture(scope="module")
def reference(tiny_llava, mixed_shards, tmp_path_factory) -> dict[int, float]:
    """One rank, ZeRO-2, accumulation 2: no collective and no blank image; the losses to reproduce."""
    run = tmp_path_factory.mktemp("mixed") / "reference"
    result = launch_training("in-process", 1, overrides(tiny_llava, mixed_shards, run, 2, "train.grad_accum=2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return train_losses(run)


@pytest.mark.parametrize(
    "launcher, ranks, zero",
    [("deepspeed", 2, 0), ("deepspeed", 2, 1), ("deepspeed", 2, 2), ("deepspeed", 2, 3), ("in-process", 1, 3)],
)
def test_text_only_and_image_micro_batches_train_as_the_reference(
    tiny_llava, mixed_shards, reference, tmp_path, launcher, ranks, zero
):
    """Two ranks, each micro-batch one sample, text-only beside image; and ZeRO-3 on one rank with accumulation,
    where a text-only micro-step left without the blank image corrupts the accumulated update."""
    assert len(mismatched_steps(mixed_shards)) >= 10, "the data must put text-only and image samples side by side"
    run = tmp_path / "run"
    extra = [] if ranks == 2 else ["train.grad_accum=2"]
    result = launch_training(launcher, ranks, overrides(tiny_llava, mixed_shards, run, zero, *extra))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert [losses[s] for s in losses] == pytest.approx([reference[s] for s in losses], rel=1e-4, abs=1e-5)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["accuracy_after"] > summary["accuracy_before"]


FULL = ["lora.enabled=false", "optimizer.lr=3e-4", "optimizer.projector_lr=3e-4"]


def test_full_fine_tuning_under_zero3_trains_as_the_reference(tiny_llava, mixed_shards, tmp_path):
    """Every weight trained (vision tower frozen): ZeRO-3 on 2 ranks against one rank, ZeRO-2, accumulation 2."""
    runs = {}
    for name, launcher, ranks, zero, extra in (
        ("reference", "in-process", 1, 2, ["train.grad_accum=2"]),
        ("zero3", "deepspeed", 2, 3, []),
    ):
        runs[name] = tmp_path / name
        result = launch_training(launcher, ranks, overrides(tiny_llava, mixed_shards, runs[name], zero, *FULL, *extra))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses, reference = train_losses(runs["zero3"]), train_losses(runs["reference"])
    assert [losses[s] for s in sorted(losses)] == pytest.approx(
        [reference[s] for s in sorted(losses)], rel=1e-4, abs=1e-5
    )


def test_qlora_on_two_ranks_with_mixed_micro_batches_runs_to_the_end(tiny_llava, mixed_shards, tmp_path):
    run = tmp_path / "qlora"
    result = launch_training("deepspeed", 2, overrides(tiny_llava, mixed_shards, run, 2, "quant.load_in_4bit=true"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["accuracy_after"] > summary["accuracy_before"]
