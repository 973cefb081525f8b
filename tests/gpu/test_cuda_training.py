"""On a CUDA device: the real trainer in bf16, one rank in-process, with SDPA and (when installed) flash-attention.

Skipped, with the reason, where there is no GPU (CI); run them with `pytest tests/gpu` on a GPU machine.
"""

import importlib.util
import json

import pytest
import torch
from conftest import ROOT, launch_training, train_losses

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
STEPS = 40


def bf16_run(tiny_llava, color_shards, run, attention: str):
    result = launch_training(
        "in-process",
        1,
        [
            f"model.path={tiny_llava}",
            f"data.train={color_shards / 'train'}",
            f"data.val={color_shards / 'val'}",
            f"train.output_dir={run}",
            "train.micro_batch_size=8",
            f"train.max_steps={STEPS}",
            "train.precision=bf16",
            "model.dtype=bfloat16",
            f"model.attention={attention}",
            "data.num_workers=1",
            "eval.at_start=false",
            f"deepspeed.config={ROOT}/configs/deepspeed/zero2.json",
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((run / "train_summary.json").read_text())


@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"])
def test_bf16_lora_learns_on_one_gpu(tiny_llava, color_shards, tmp_path, attention):
    if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed (pip install -e '.[flash]')")
    summary = bf16_run(tiny_llava, color_shards, tmp_path / attention, attention)
    losses = list(train_losses(tmp_path / attention).values())
    assert summary["steps"] == STEPS and len(losses) == STEPS
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert summary["accuracy_after"] >= 0.5
