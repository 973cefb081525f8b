"""`make demo` does what README.md says it does: synthetic shapes → shards → LoRA on a tiny LLaVA, ZeRO-2 on 2 CPU
ranks, and a summary.json with the held-out exact-match accuracy going from 0% to 100%."""

import json
import re
import sys
import time

import pytest
from conftest import ROOT, run_process_group, training_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo at its default size, as `make demo` runs it (launch/demo.py → trainer.testing.demo.main), into a
    temporary folder. A child process group, so a timeout also kills the launcher, the ranks and the build's pool."""
    out = tmp_path_factory.mktemp("demo").resolve() / "demo"
    started = time.monotonic()
    result = run_process_group([sys.executable, str(ROOT / "launch/demo.py"), "--out", str(out)], training_env(), 600)
    print(f"\ndemo took {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout, json.loads((out / "summary.json").read_text())


def test_accuracy_goes_from_zero_to_all_held_out_answers(demo):
    out, stdout, summary = demo
    # README.md line 13: "held-out exact-match accuracy before and after training (0% → 100% ..."
    assert summary["accuracy_before"] == 0.0
    assert summary["accuracy_after"] == 1.0
    assert re.search(r"exact-match accuracy 0\.00% → 100\.00% after \d+ steps on 2 ranks \(ZeRO-2\)", stdout)
    evals = [json.loads(line) for line in (out / "train/metrics.jsonl").read_text().splitlines() if "eval/loss" in line]
    assert [(m["step"], m["eval/accuracy"], m["eval/samples"]) for m in evals] == [(0, 0.0, 240), (270, 1.0, 240)]


def test_two_cpu_ranks_zero2_lora_on_a_tiny_llava(demo):
    out, _, summary = demo
    # README.md line 7: "LoRA on a tiny LLaVA, ZeRO-2, 2 CPU ranks"
    assert (summary["world_size"], summary["zero_stage"]) == (2, 2)
    assert summary["steps"] == 270  # 2160 train samples / (8 a rank x 2 ranks) x 2 epochs (configs/demo.yaml)
    resolved = json.loads((out / "train/config.resolved.json").read_text())
    assert resolved["lora"]["enabled"] and resolved["deepspeed"]["config"] == "configs/deepspeed/zero2.json"
    assert json.loads((out / "base_model/config.json").read_text())["model_type"] == "llava"


def test_summary_names_steps_checkpoint_base_model_and_shards(demo):
    out, _, summary = demo
    # README.md lines 12-15: summary.json holds the accuracies, steps, world size, ZeRO stage, the final checkpoint,
    # the base model and the shard folder
    assert {"accuracy_before", "accuracy_after", "steps", "world_size", "zero_stage"} <= set(summary)
    assert summary["checkpoint"] == str(out / "train/checkpoints/step00000270")
    assert (out / "train/checkpoints/step00000270").is_dir()
    assert summary["base_model"] == str(out / "base_model") and (out / "base_model/model.safetensors").is_file()
    assert summary["shards"] == str(out / "shards")
    splits = json.loads((out / "shards/report.json").read_text())["splits"]
    assert {name: split["samples"] for name, split in splits.items()} == {"train": 2160, "val": 240}  # of 2400


def test_the_whole_demo_takes_under_two_minutes(demo):
    _, _, summary = demo
    # README.md line 14: "under 2 minutes in all with data and model set-up, on a 2-core machine"
    assert summary["wall_time_s"] < 120
