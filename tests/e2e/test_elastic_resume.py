"""Resuming on another number of ranks, for real (DeepSpeed, gloo CPU ranks): train on 2, resume on 1, resume again on
2, for ZeRO-2 LoRA (frozen base left out of the checkpoint) and ZeRO-3 full fine-tuning. The optimizer state is
re-partitioned through a universal copy of the checkpoint, made once (`trainer.train.universal`).

What is compared: the consolidated fp32 weights and Adam moments of every trained tensor as saved and as loaded
(`Probe`, below, dumps them from inside the runs), the step counter, and the loss against the uninterrupted 2-rank
run (which a same-size resume reproduces bit-exactly: test_train_distributed.py). Each segment keeps 8 samples per
optimizer step (1 rank: grad_accum 2; 4 ranks: micro-batch 2); with as many stream readers (ranks × grad_accum) the
steps also get the same samples (data_shards.stream.deal), so the losses match step by step.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, launch_training, read_metrics, train_losses

from trainer.run_folder import CheckpointError
from trainer.train.callbacks import Callback
from trainer.train.universal import UNIVERSAL, WORKING, WORLD_SIZE, prepare, saved_world_size

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

PROBE_DIR, PROBE_STEPS = "ELASTIC_PROBE_DIR", "ELASTIC_PROBE_STEPS"
PROBE = "test_elastic_resume:Probe"
N = 4  # steps per segment: 2 ranks to N, 1 rank to 2N, 2 ranks to 3N
CASES = {
    "zero2-lora": (
        f"deepspeed.config={ROOT}/configs/deepspeed/zero2.json",
        "lora.enabled=true",
        "optimizer.projector_lr=1e-3",
    ),
    "zero3-full": (f"deepspeed.config={ROOT}/configs/deepspeed/zero3.json", "lora.enabled=false", "optimizer.lr=1e-3"),
}


class Probe(Callback):
    """Rank 0 writes the consolidated fp32 weight and Adam moments of every trained tensor (gathered from all ranks):
    `loaded{step}` at the first step boundary after a resume (what was loaded, before any update) and
    `after{step}` once each step in $ELASTIC_PROBE_STEPS is done (its checkpoint, if any, holds exactly that)."""

    def __init__(self):
        self.folder = Path(os.environ[PROBE_DIR])
        self.steps = {int(step) for step in os.environ.get(PROBE_STEPS, "").split(",") if step}
        self.first = True

    def on_step_boundary(self, trainer) -> None:
        if self.first and trainer.state.step:  # a fresh run has no optimizer state before its first step
            self.dump(trainer, f"loaded{trainer.state.step}")
        self.first = False

    def on_step_end(self, trainer) -> None:
        if trainer.state.step in self.steps:
            self.dump(trainer, f"after{trainer.state.step}")

    def dump(self, trainer, name: str) -> None:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        optimizer = trainer.engine.optimizer
        if hasattr(optimizer, "_hp_optimizer_states_linked"):  # ZeRO-1/2 link the moments to their parameters once,
            optimizer._hp_optimizer_states_linked = False  # after the first group's first step: later groups' states
            optimizer._lazy_init_hp_params_optimizer_state()  # do not exist yet then. Link them all to what is there.
        tensors = {}
        for key, parameter in trainer.engine.module.named_parameters():
            if parameter.requires_grad:  # each call is a collective: every rank makes them, in the same order
                tensors[key] = {
                    "fp32": safe_get_full_fp32_param(parameter).clone(),
                    "exp_avg": safe_get_full_optimizer_state(parameter, "exp_avg").clone(),
                    "exp_avg_sq": safe_get_full_optimizer_state(parameter, "exp_avg_sq").clone(),
                }
        adam_steps = {float(s["step"]) for s in trainer.engine.optimizer.optimizer.state.values() if "step" in s}
        if trainer.world.is_main:
            extra = {"global_steps": trainer.engine.global_steps, "lr": trainer.engine.get_lr(), "adam": adam_steps}
            torch.save({"tensors": tensors, **extra}, self.folder / f"{name}.world{trainer.world.world_size}.pt")


def overrides(tiny_llava: Path, shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny_llava}",
        f"data.train={shards / 'train'}",
        "data.val=",
        f"train.output_dir={run_dir}",
        "train.micro_batch_size=4",
        "train.log_every=1",
        "data.num_workers=1",
        "eval.at_start=false",
        "optimizer.schedule=constant",
        "optimizer.warmup_steps=0",
        f"checkpoint.every_steps={N}",
        "checkpoint.keep_last=5",
        f"train.callbacks=[{PROBE}]",
        *extra,
    ]


def probe_env(folder: Path, *steps: int) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(ROOT / "tests" / "e2e"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return {PROBE_DIR: str(folder), PROBE_STEPS: ",".join(map(str, steps)), "PYTHONPATH": path}


def check(result):
    failed = max(result.stderr.find("training failed"), 0)  # a rank's own traceback, before the launcher's
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[failed : failed + 6000] + result.stderr[-1000:]
    return result


def train(ranks: int, *args, **kwargs):
    return check(launch_training("in-process" if ranks == 1 else "torchrun", ranks, *args, **kwargs))


def probed(folder: Path, name: str) -> dict:
    return torch.load(folder / f"{name}.pt", weights_only=False)


def assert_same_state(saved: dict, loaded: dict) -> None:
    """Bit-exact: re-partitioning copies fp32 fragments, it computes nothing. The learning rates are per parameter
    group (projector, language model, no-decay): ZeRO-3's universal loading alone would give all the first one's."""
    assert sorted(saved["tensors"]) == sorted(loaded["tensors"]) and saved["tensors"]
    for name, states in saved["tensors"].items():
        for key, tensor in states.items():
            assert torch.equal(tensor, loaded["tensors"][name][key]), f"{name} {key}"
    assert_same_counters(saved, loaded)


def assert_same_counters(expected: dict, got: dict) -> None:
    """The engine's step, each Adam state's step (what its bias correction reads) and each group's learning rate:
    they do not depend on the samples, so they also hold one step after the resume. ZeRO-3's universal loading alone
    shares one Adam step among the groups, which then count 3 steps per step."""
    assert expected["global_steps"] == got["global_steps"] and expected["adam"] == got["adam"]
    assert expected["lr"] == got["lr"] and len(set(expected["lr"])) > 1


def assert_loss_continues(expected: dict[int, float], got: dict[int, float], steps: range) -> None:
    """Step by step as the uninterrupted run: the stream deals to world size × grad_accum readers, so 1 rank × 2
    micro-batches takes the very samples 2 ranks took, and the optimizer state is the saved one; only the order of
    the gradient sums differs (an all-reduce against accumulation), hence a relative 1e-3 (measured: < 1e-4)."""
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-3), (step, expected[step], got[step])


@pytest.fixture(scope="module", params=list(CASES))
def elastic(request, tiny_llava, color_shards, tmp_path_factory):
    """2 ranks to 3N steps (the reference); from its step-N checkpoint (an explicit path) 1 rank to 2N, then
    `checkpoint.resume=auto` on 2 ranks to 3N in the same run folder."""
    case, root = CASES[request.param], tmp_path_factory.mktemp(request.param)
    reference, run, probes = root / "reference", root / "elastic", root / "probes"
    train(
        2,
        overrides(tiny_llava, color_shards, reference, *case, f"train.max_steps={3 * N}"),
        env=probe_env(probes / "reference", N, N + 1, 2 * N, 2 * N + 1),
    )
    source = reference / "checkpoints" / f"step{N:08d}"
    first = overrides(tiny_llava, color_shards, run, *case, f"train.max_steps={2 * N}", "train.grad_accum=2")
    one = train(1, [*first, f"checkpoint.resume={source}"], env=probe_env(probes / "one", N + 1, 2 * N))
    again = overrides(tiny_llava, color_shards, run, *case, f"train.max_steps={3 * N}", "checkpoint.resume=auto")
    two = train(2, again, env=probe_env(probes / "two", 2 * N + 1))
    return {"case": case, "reference": reference, "run": run, "probes": probes, "logs": (one, two)}


def test_two_to_one_to_two_ranks(elastic):
    reference, run, probes = elastic["reference"], elastic["run"], elastic["probes"]
    one, two = elastic["logs"]
    assert "was written by 2 ranks, resuming on 1" in one.stderr and f"at step {N} " in one.stderr
    assert "was written by 1 ranks, resuming on 2" in two.stderr and f"at step {2 * N} " in two.stderr
    assert "no RNG state for rank 1" in two.stderr  # rank 0 restored its own; rank 1 had none to restore
    # the step counter continues: each step logged once, the second resume's after the first's
    assert [m["step"] for m in read_metrics(run) if "train/loss" in m] == list(range(N + 1, 3 * N + 1))
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 3 * N
    saved = run / "checkpoints" / f"step{2 * N:08d}"
    assert saved_world_size(saved) == 1 and (saved / UNIVERSAL).is_dir() and not (saved / WORKING).exists()
    assert_same_state(probed(probes / "reference", f"after{N}.world2"), probed(probes / "one", f"loaded{N}.world1"))
    assert_same_state(probed(probes / "one", f"after{2 * N}.world1"), probed(probes / "two", f"loaded{2 * N}.world2"))
    for step, resumed in ((N + 1, "one/after{}.world1"), (2 * N + 1, "two/after{}.world2")):
        assert_same_counters(probed(probes, f"reference/after{step}.world2"), probed(probes, resumed.format(step)))
    expected, got = train_losses(reference), train_losses(run)
    assert_loss_continues(expected, got, range(N + 1, 2 * N + 1))
    assert_loss_continues(expected, got, range(2 * N + 1, 3 * N + 1))


@pytest.mark.parametrize("elastic", ["zero2-lora"], indirect=True)
def test_two_to_four_ranks_reuses_the_universal_copy(elastic, tiny_llava, color_shards, tmp_path):
    """4 gloo ranks on this 2-core machine: kept to 1 step. The step-N checkpoint was converted for the 1-rank
    resume above; a resume on 4 ranks reads the same copy."""
    universal = elastic["reference"] / "checkpoints" / f"step{N:08d}" / UNIVERSAL
    before = universal.stat()
    run, probes = tmp_path / "four", tmp_path / "probes"
    extra = (f"train.max_steps={N + 1}", "train.micro_batch_size=2", f"checkpoint.resume={universal.parent}")
    four = train(4, overrides(tiny_llava, color_shards, run, *elastic["case"], *extra), env=probe_env(probes))
    assert f"reusing the universal checkpoint {universal}" in four.stderr and "converting" not in four.stderr
    assert (universal.stat().st_ino, universal.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert_same_state(probed(elastic["probes"] / "reference", f"after{N}.world2"), probed(probes, f"loaded{N}.world4"))
    assert sorted(train_losses(run)) == [N + 1]


@pytest.mark.parametrize("elastic", ["zero2-lora"], indirect=True)
def test_a_broken_checkpoint_fails_naming_it_and_leaves_no_copy(elastic, tiny_llava, color_shards, tmp_path):
    source = elastic["reference"] / "checkpoints" / f"step{2 * N:08d}"
    run = tmp_path / "broken"
    checkpoint = run / "checkpoints" / source.name
    shutil.copytree(source, checkpoint, ignore=shutil.ignore_patterns(UNIVERSAL))
    (run / "checkpoints" / "latest").write_text(source.name)
    (checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()  # a lost shard
    extra = (f"train.max_steps={2 * N + 1}", "checkpoint.resume=auto")
    arguments = overrides(tiny_llava, color_shards, run, *elastic["case"], *extra)
    failed = launch_training("in-process", 1, arguments, env=probe_env(tmp_path / "probes"))
    assert failed.returncode == 1
    assert f"{checkpoint}: written by 2 ranks, but holds the optimizer shards of ranks [0]" in failed.stderr
    assert not (checkpoint / UNIVERSAL).exists() and not (checkpoint / WORKING).exists()


@pytest.mark.parametrize("elastic", ["zero2-lora"], indirect=True)
def test_conversion_clears_a_crashed_attempt_and_is_made_once(elastic, tmp_path):
    """Rank 0's part, without a process group: what a crash mid-conversion leaves (the working folder) is cleared,
    the copy appears only complete, and a second call reuses it. A checkpoint from before the world size was
    recorded in trainer_state.json has it from DeepSpeed's own files."""
    checkpoint = tmp_path / "step"
    shutil.copytree(elastic["reference"] / "checkpoints" / f"step{2 * N:08d}", checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    del state[WORLD_SIZE]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    assert saved_world_size(checkpoint) == 2
    shutil.rmtree(checkpoint / UNIVERSAL, ignore_errors=True)
    crashed = checkpoint / WORKING / UNIVERSAL / "zero"
    crashed.mkdir(parents=True)
    (crashed / "half-written.pt").write_bytes(b"")
    universal = prepare(checkpoint, rank=0)
    assert universal == checkpoint / UNIVERSAL and not (checkpoint / WORKING).exists()
    assert (universal / "zero" / "optimizer_state.pt").is_file() and not list(universal.rglob("half-written.pt"))
    assert prepare(checkpoint, rank=0).stat().st_ino == universal.stat().st_ino
    (checkpoint / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    shutil.rmtree(universal)
    with pytest.raises(CheckpointError, match=f"{checkpoint}: written by 2 ranks"):
        prepare(checkpoint, rank=0)
