"""The memory probe measures real resident memory by phase: a block written and freed once the gradients are
complete shows in the optimizer-step peak and not in the forward/backward one."""

import json

import torch
from conftest import launch_training

from trainer.testing.memory_probe import CALLBACK
from trainer.train.callbacks import Callback

BLOCK_BYTES = 256 * 2**20


class TransientBlock(Callback):
    """Writes a 256 MiB tensor and frees it, after the probe has closed the forward/backward phase."""

    def on_gradients(self, trainer) -> None:
        block = torch.ones(BLOCK_BYTES // 4)
        del block


def test_peaks_by_phase(tiny_llava, color_shards, tmp_path):
    run = tmp_path / "run"
    result = launch_training(
        "in-process",
        1,
        [
            f"model.path={tiny_llava}",
            f"data.train={color_shards / 'train'}",
            "data.val=",
            f"train.output_dir={run}",
            "train.max_steps=2",
            "train.micro_batch_size=2",
            "data.num_workers=0",
            "deepspeed.zero_stage=0",
            f"train.callbacks=[{CALLBACK},test_memory_probe:TransientBlock]",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((run / "memory" / "rank0.json").read_text())
    phases = figures["phase_peak_bytes"]
    assert figures["steps"] == 2 and set(phases) == {"forward_backward", "optimizer_step"}
    assert phases["optimizer_step"] - phases["forward_backward"] > 0.9 * BLOCK_BYTES
    assert figures["train_peak_bytes"] == phases["optimizer_step"]
    assert 0 < figures["setup_peak_bytes"] < BLOCK_BYTES
