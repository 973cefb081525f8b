"""Real DeepSpeed runs with 2 CPU ranks (gloo): ZeRO-2 and ZeRO-3 LoRA, exact resume, NaN policy, W&B offline."""

import json
from pathlib import Path

import pytest
from conftest import ROOT, launch_training, read_metrics, shm_allreduce_segments, train_losses
from safetensors.torch import load_file

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def overrides(tiny_llava: Path, shards: Path, run_dir: Path, *extra: str, val: bool = False) -> list[str]:
    return [
        f"model.path={tiny_llava}",
        f"data.train={shards / 'train'}",
        f"data.val={shards / 'val' if val else ''}",
        f"train.output_dir={run_dir}",
        "train.micro_batch_size=4",
        "train.log_every=1",
        "data.num_workers=1",
        "eval.at_start=false",
        *extra,
    ]


def check(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@pytest.mark.parametrize("zero", [2, 3])
def test_lora_loss_falls_and_adapter_is_complete(tiny_llava, color_shards, tmp_path, zero):
    run = tmp_path / f"zero{zero}"
    check(
        launch_training(
            "deepspeed",
            2,
            overrides(
                tiny_llava,
                color_shards,
                run,
                f"deepspeed.config={ROOT}/configs/deepspeed/zero{zero}.json",
                "train.max_steps=40",
                "tracking.wandb=offline",
            ),
        )
    )
    losses = list(train_losses(run).values())
    assert len(losses) == 40
    assert mean(losses[-5:]) < 0.5 * mean(losses[:5])
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    adapter = load_file(checkpoint / "adapter" / "adapter_model.safetensors")
    lora = {k: v for k, v in adapter.items() if "lora_" in k}
    assert lora and all(v.numel() > 0 for v in adapter.values())
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())  # trained, not the zero init
    assert any("multi_modal_projector" in k for k in adapter)  # modules_to_save carried
    assert json.loads((checkpoint / "adapter" / "adapter_config.json").read_text())["r"] == 16
    assert len(list((run / "wandb").glob("offline-run-*/run-*.wandb"))) == 1  # rank 0 only


def test_resume_after_kill_gives_the_same_losses(tiny_llava, color_shards, tmp_path):
    common = ["train.max_steps=16", "checkpoint.every_steps=8", "data.num_workers=2"]
    segments_before = shm_allreduce_segments()
    whole = tmp_path / "whole"
    check(launch_training("deepspeed", 2, overrides(tiny_llava, color_shards, whole, *common)))
    broken = tmp_path / "broken"
    killed = launch_training(
        "deepspeed", 2, overrides(tiny_llava, color_shards, broken, *common), faults="exit_step=11"
    )
    assert killed.returncode != 0
    assert (broken / "checkpoints" / "latest").read_text().strip() == "step00000008"
    assert shm_allreduce_segments() == segments_before  # DeepSpeed's 69 MB per-rank buffers freed, even when killed
    check(
        launch_training("torchrun", 2, overrides(tiny_llava, color_shards, broken, *common, "checkpoint.resume=auto"))
    )
    expected, resumed = train_losses(whole), train_losses(broken)
    assert sorted(resumed) == list(range(1, 17))
    assert [resumed[s] for s in range(9, 17)] == [expected[s] for s in range(9, 17)]

    preempted = tmp_path / "preempted"  # a warning signal reaching rank 0 only: both ranks stop after step 5
    stopped = launch_training(
        "torchrun", 2, overrides(tiny_llava, color_shards, preempted, *common), faults="signal_step=5"
    )
    assert stopped.returncode != 0 and "stopped by SIGUSR2 after step 5" in stopped.stderr
    assert (preempted / "checkpoints" / "latest").read_text().strip() == "step00000005"
    check(launch_training("deepspeed", 2, overrides(tiny_llava, color_shards, preempted, *common)))
    resumed = train_losses(preempted)
    assert [resumed[s] for s in range(6, 17)] == [expected[s] for s in range(6, 17)]


def test_nan_loss_is_skipped_then_aborts_keeping_the_last_checkpoint(tiny_llava, color_shards, tmp_path):
    skipped = tmp_path / "skip"
    check(
        launch_training(
            "deepspeed",
            2,
            overrides(tiny_llava, color_shards, skipped, "train.max_steps=6"),
            faults="nan_micro_steps=3",
        )
    )
    summary = json.loads((skipped / "train_summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 6
    aborted = tmp_path / "abort"
    result = launch_training(
        "deepspeed",
        2,
        overrides(
            tiny_llava, color_shards, aborted, "train.max_steps=10", "checkpoint.every_steps=2", "train.max_bad_steps=3"
        ),
        faults="nan_micro_steps=5,6,7",
    )
    assert result.returncode != 0
    assert "3 non-finite losses in a row" in result.stderr and "step00000004" in result.stderr
    assert (aborted / "checkpoints" / "latest").read_text().strip() == "step00000004"
    assert (aborted / "checkpoints" / "step00000004" / "complete").exists()


def test_single_process_run_evaluates_and_learns(tiny_llava, color_shards, tmp_path):
    run = tmp_path / "single"
    check(
        launch_training(
            "python",
            1,
            overrides(
                tiny_llava,
                color_shards,
                run,
                "train.max_steps=100",
                "eval.at_start=true",
                "train.micro_batch_size=8",
                val=True,
            ),
        )
    )
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 1 and summary["accuracy_before"] < 0.3
    assert summary["accuracy_after"] >= 0.9
    evals = [m for m in read_metrics(run) if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [0, 100]


def test_checkpoints_keep_the_last_and_the_best(tiny_llava, color_shards, tmp_path):
    run = tmp_path / "keep"
    check(
        launch_training(
            "in-process",
            1,
            overrides(
                tiny_llava,
                color_shards,
                run,
                "train.max_steps=8",
                "checkpoint.every_steps=2",
                "eval.every_steps=2",
                "eval.max_batches=1",
                "checkpoint.keep_last=1",
                "checkpoint.best_metric=eval/loss",
                "checkpoint.best_mode=max",
                val=True,
            ),
        )
    )  # "best" = highest loss: the first, so it differs from the last
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step00000002", "step00000008"]
    assert json.loads((checkpoints / "best.json").read_text())["tag"] == "step00000002"
    assert (checkpoints / "latest").read_text().strip() == "step00000008"


def test_bf16_with_gradient_accumulation(tiny_llava, color_shards, tmp_path):
    run = tmp_path / "bf16"
    check(
        launch_training(
            "deepspeed",
            2,
            overrides(
                tiny_llava,
                color_shards,
                run,
                "train.max_steps=8",
                "train.precision=bf16",
                "model.dtype=bfloat16",
                "train.grad_accum=2",
                "train.log_every=3",
            ),
        )
    )
    steps = [m for m in read_metrics(run) if "train/loss" in m]
    assert [m["step"] for m in steps] == [3, 6, 8]  # every log_every steps, and the last
    for metrics in steps:  # per step over each interval: micro batch 4 × accumulation 2 × 2 ranks = 16 samples
        assert metrics["perf/samples_per_s"] * metrics["perf/step_time_s"] == pytest.approx(16)
    assert steps[-1]["train/loss"] < steps[0]["train/loss"]


@pytest.mark.timeout(1200)
def test_zero3_cpu_offload(tiny_llava, color_shards, tmp_path, torch_extensions):
    """ZeRO-3 with optimizer and parameters on the CPU (DeepSpeedCPUAdam, JIT-compiled)."""
    run = tmp_path / "offload"
    check(
        launch_training(
            "in-process",
            1,
            overrides(
                tiny_llava,
                color_shards,
                run,
                "train.max_steps=4",
                f"deepspeed.config={ROOT}/configs/deepspeed/zero3-offload.json",
            ),
            timeout=1100,
            env=torch_extensions,
        )
    )
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["zero_stage"] == 3 and summary["steps"] == 4
