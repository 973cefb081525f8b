"""bench/gpu.py's CPU dry run: every case trains (tiny sizes, 2 steps) through the same code the GPU run uses,
with its planner estimate, model FLOPs and, where the case has one, the HF Trainer baseline."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_gpu_benchmark_dry_run(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench/gpu.py"), "--dry-run", "--out", str(tmp_path), "--json", str(out)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    ran = {name: row for name, row in cases.items() if "skipped" not in row}
    assert set(cases) - set(ran) == {"qwen2vl2b-lora-zero2-flash-attn"}  # needs CUDA
    for name, row in ran.items():
        assert row["tokens_per_s"] > 0 and row["planned_gib"] > 0 and row["model_tflop_per_s"] > 0, name
        assert row["mfu"] is None, name  # no GPU peak on a CPU
    assert ran["llava7b-lora-zero2"]["ours_over_hf"] > 0 and ran["qwen2vl2b-lora-zero2"]["ours_over_hf"] > 0
    assert ran["llava7b-lora-zero2-packing"]["nonpad_fraction"] > ran["llava7b-lora-zero2"]["nonpad_fraction"]
