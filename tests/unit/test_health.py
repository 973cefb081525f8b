"""Skipping an optimizer step after a non-finite loss: DeepSpeed's own checks in every engine shardtune builds,
our optimizer where DeepSpeed has none, and the DeepSpeed JSON switches that would turn them off."""

import json

import pytest
import torch
from conftest import ROOT, run_process_group, training_env

from trainer.config import deepspeed_json
from trainer.config.fields import ConfigError
from trainer.config.schema import load
from trainer.distributed.launchers import torchrun_command
from trainer.train.agreement import NonFiniteLossError, count_step
from trainer.train.optim import FiniteAdamW
from trainer.train.state import TrainerState


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_engine_skips_the_step_of_a_nan_loss_on_one_rank_on_every_rank(tmp_path, torch_extensions):
    command = torchrun_command(2, ROOT / "tests/unit/nonfinite_worker.py", [str(tmp_path)])
    result = run_process_group(command, {**training_env(), **torch_extensions}, timeout=800)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(line) for rank in (0, 1) for line in (tmp_path / f"rank{rank}.jsonl").read_text().splitlines()]
    engines = {(s, p, False) for s in range(4) for p in ("fp32", "bf16")} | {(2, "fp32", True), (3, "fp32", True)}
    assert {(run["stage"], run["precision"], run["offload"]) for run in runs} == engines
    for run in runs:
        applied, skipped, after = run["steps"]
        assert applied == after == {"applied": True, "changed": True, "finite": True}, run
        assert skipped == {"applied": False, "changed": False, "finite": True}, run
    assert {run["optimizer"] for run in runs if (run["stage"], run["precision"]) == (0, "fp32")} == {"FiniteAdamW"}


def test_finite_adamw_skips_nan_gradients_and_otherwise_steps_as_adamw():
    torch.manual_seed(0)
    start = torch.randn(4, 3)
    ours, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    guarded, plain = FiniteAdamW([ours], lr=0.1), torch.optim.AdamW([reference], lr=0.1)
    ours.grad = torch.ones(4, 3)
    ours.grad[2, 1] = float("inf")
    guarded.step()
    assert guarded.overflow and torch.equal(ours.detach(), start) and not guarded.state
    for _ in range(2):
        gradient = torch.randn(4, 3)
        ours.grad, reference.grad = gradient.clone(), gradient.clone()
        guarded.step()
        plain.step()
        assert not guarded.overflow
    assert torch.equal(ours.detach(), reference.detach())


@pytest.mark.parametrize("switch", ["bf16.check_grad_overflow", "zero_optimization.compute_grad_norm"])
def test_a_deepspeed_json_that_turns_the_overflow_checks_off_is_refused(switch, tmp_path):
    section, key = switch.split(".")
    custom = json.loads((ROOT / "configs/deepspeed/zero2.json").read_text())
    custom[section][key] = False
    (tmp_path / "ds.json").write_text(json.dumps(custom))
    config = load(ROOT / "configs/demo.yaml", [f"deepspeed.config={tmp_path / 'ds.json'}"])
    with pytest.raises(ConfigError, match=switch.replace(".", r"\.") + "=false"):
        deepspeed_json.resolve(config, 2, 64)


@pytest.mark.parametrize(
    "stage,precision,unchecked",
    [(0, "fp32", True), (0, "bf16", False), (0, "fp16", False), (1, "fp32", False), (3, "fp32", False)],
)
def test_only_zero_stage_0_in_fp32_hands_our_optimizer_unchecked_gradients(stage, precision, unchecked):
    config = load(ROOT / "configs/demo.yaml", [f"deepspeed.zero_stage={stage}", f"train.precision={precision}"])
    assert deepspeed_json.passes_gradients_unchecked(deepspeed_json.resolve(config, 2, 64)) is unchecked


def test_skips_after_nan_losses_abort_in_a_row_and_fp16_overflows_never_do():
    state = TrainerState(step=4)
    outcomes = [(False, True), (False, False), (False, True), (True, False), (False, True), (False, True)]
    assert [count_step(state, applied, nonfinite, 3, lambda: "step00000004") for applied, nonfinite in outcomes] == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    assert (state.skipped_steps, state.bad_steps) == (5, 2)  # the applied step reset the run of bad ones
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row .* last good checkpoint: step00000004"):
        count_step(state, False, True, 3, lambda: "step00000004")


def test_a_step_applied_despite_a_nan_loss_stops_the_run():
    with pytest.raises(NonFiniteLossError, match="applied an optimizer step whose loss was NaN/Inf"):
        count_step(TrainerState(), True, True, 3, lambda: None)
