"""Resuming on another number of ranks: ZeRO's optimizer state, partitioned for N ranks, re-partitioned for M.

DeepSpeed refuses a ZeRO checkpoint written with another data-parallel world size ("The checkpoint being loaded used
a DP world size of N but the current world size is M"). Its universal checkpoint format (a folder per parameter with
the whole fp32 weight and Adam moments) loads on any number of ranks. So a resume on another world size converts the
checkpoint once, into `{checkpoint}/universal/`, and the engine loads that:

- rank 0 converts, with `deepspeed.checkpoint.ds_to_universal` in a child process (the shards it reads are freed when
  it ends, and it may use worker processes without forking a rank); the other ranks wait and learn the outcome from
  rank 0, so a failed conversion fails every rank with the same message instead of hanging them;
- into a temporary folder renamed into place once complete: a crash mid-conversion leaves no half-written copy, and
  the next attempt clears the leftovers;
- a later resume from the same checkpoint, on any other world size, reuses the copy; it is pruned with its checkpoint.
- under ZeRO-3, what DeepSpeed's universal loading gets wrong with several parameter groups is put right
  (`repair_zero3_state`).

Weights the optimizer does not hold (frozen ones: the base model under LoRA, a frozen vision tower) are not in a
universal checkpoint and are not loaded from it: they are the ones `model.path` gave the engine, as in the saved run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.run_folder import TRAINER_STATE, CheckpointError

log = logging.getLogger("shardtune")

UNIVERSAL = "universal"
WORKING = ".universal.partial"  # the conversion's working folder, inside the checkpoint
WORLD_SIZE = "world_size"  # the data-parallel world size, in trainer_state.json
CONVERTER = "deepspeed.checkpoint.ds_to_universal"
SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_")  # DeepSpeed's optimizer shard of one data-parallel rank


def saved_world_size(directory: Path) -> int:
    """The data-parallel world size `directory` was written with: trainer_state.json's, or (checkpoints written before
    it was recorded there) DeepSpeed's own, in its model-states file."""
    state = directory / TRAINER_STATE
    recorded = json.loads(state.read_text()).get(WORLD_SIZE) if state.exists() else None
    if recorded:
        return int(recorded)
    files = sorted(directory.glob("mp_rank_*_model_states.pt")) or sorted(directory.glob("zero_pp_rank_0_*states.pt"))
    if not files:
        raise CheckpointError(f"{directory}: no DeepSpeed model-states file, cannot tell its world size")
    return int(torch.load(files[0], map_location="cpu", mmap=True, weights_only=False)["dp_world_size"])


def needs_universal(engine, directory: Path) -> bool:
    """True when `directory`'s ZeRO partitions were cut for another number of ranks than `engine` runs on. Without
    ZeRO (stage 0) every rank holds the whole optimizer state and DeepSpeed loads it on any world size."""
    return bool(engine.zero_optimization()) and saved_world_size(directory) != engine.seq_dp_world_size


def prepare(directory: Path, rank: int) -> Path:
    """`directory`'s universal copy, converted by rank 0 if there is none yet; every rank returns once it exists."""
    target = directory / UNIVERSAL
    error = None
    if rank == 0:
        try:
            if target.is_dir():
                log.info("reusing the universal checkpoint %s", target)
            else:
                convert(directory, target)
        except CheckpointError as failure:
            error = str(failure)
        except Exception as failure:  # told to the other ranks too, which would otherwise wait for rank 0 forever
            error = f"{directory}: converting to a universal checkpoint failed: {failure!r}"
    error = shared_from_rank0(error)
    if error:
        raise CheckpointError(error)
    return target


def convert(directory: Path, target: Path) -> None:
    """ds_to_universal into `{directory}/.universal.partial/universal`, renamed to `target` once complete. The
    converter also writes `latest_universal` beside its output: that stays in the working folder, removed after."""
    check_shards(directory)
    working = directory / WORKING
    shutil.rmtree(working, ignore_errors=True)  # a crashed earlier attempt
    output = working / UNIVERSAL
    workers = str(max(1, min(4, (os.cpu_count() or 1) // 2)))
    command = [sys.executable, "-m", CONVERTER, "--input_folder", str(directory), "--output_folder", str(output)]
    command += ["--inject_missing_state", "--num_extract_workers", workers, "--num_merge_workers", workers]
    started = time.perf_counter()
    log.info("converting %s (world size %d) to a universal checkpoint", directory, saved_world_size(directory))
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0 or not (output / "zero").is_dir():
        shutil.rmtree(working, ignore_errors=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        raise CheckpointError(
            f"{directory}: converting to a universal checkpoint (to resume on another world size) failed with "
            f"exit code {done.returncode}: " + " | ".join(tail)
        )
    os.replace(output, target)
    shutil.rmtree(working, ignore_errors=True)
    log.info("universal checkpoint %s written in %.1f s (%s)", target, time.perf_counter() - started, size_of(target))


def check_shards(directory: Path) -> None:
    """One optimizer shard per saved rank: the converter counts the files it finds, so a lost shard would give a
    universal checkpoint of the wrong partitioning instead of an error."""
    ranks = saved_world_size(directory)
    names = (path.name for path in directory.glob("*zero_pp_rank_*_mp_rank_*_optim_states.pt"))
    found = {int(match[1]) for match in map(SHARD.search, names) if match}
    if found != set(range(ranks)):
        raise CheckpointError(
            f"{directory}: written by {ranks} ranks, but holds the optimizer shards of ranks {sorted(found)}"
        )


def shared_from_rank0(value):
    """Rank 0's `value` on every rank (the barrier the other ranks wait at during a conversion)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def size_of(folder: Path) -> str:
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return f"{total / 2**20:.1f} MiB"


def check_complete(module, folder: Path) -> None:
    """Every trained tensor has its weight and Adam moments in the universal folder; DeepSpeed would otherwise stop
    at the first missing one with a bare FileNotFoundError."""
    missing = [
        name
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
        and not all((folder / "zero" / name / f"{key}.pt").is_file() for key in ("fp32", "exp_avg", "exp_avg_sq"))
    ]
    if missing:
        raise CheckpointError(f"{folder}: lacks {len(missing)} trained tensors, e.g. {missing[:3]}")


def repair_zero3_state(engine, folder: Path) -> None:
    """Two things ZeRO-3's universal loading (DeepSpeed 0.19.8, `load_hp_checkpoint_state_from_checkpoint_dir_stage3`)
    gets wrong with several parameter groups, put right as a same-size load has them; ZeRO-1/2's loading has neither:
    - it gives every group the first group's settings (the projector's learning rate would become the language
      model's, a no-decay group would decay): each gets its own back;
    - it gives every group's Adam state one shared `step` tensor, which each group's update then advances: after
      one step of 3 groups it says 3 steps more, and the bias correction is wrong from then on. Each gets a copy."""
    if not engine.zero_optimization_partition_weights():
        return
    saved = torch.load(folder / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)["param_groups"]
    optimizer = engine.optimizer.optimizer
    if len(saved) != len(optimizer.param_groups):
        raise CheckpointError(
            f"{folder}: {len(saved)} optimizer parameter groups saved, {len(optimizer.param_groups)} now"
        )
    for group, settings in zip(optimizer.param_groups, saved):
        group.update({key: value for key, value in settings.items() if key != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


@contextmanager
def loading_universal(engine):
    """The engine reads `"checkpoint": {"load_universal": true}` at `load_checkpoint` only (DeepSpeed 0.19.8): set
    it for this one load, so the run's DeepSpeed config stays the one it was given (and a later load is ZeRO's)."""
    config = engine._config
    if not hasattr(config, "load_universal_checkpoint"):
        raise CheckpointError(f"this DeepSpeed ({engine.__class__.__module__}) has no universal checkpoint loading")
    before, config.load_universal_checkpoint = config.load_universal_checkpoint, True
    try:
        yield
    finally:
        config.load_universal_checkpoint = before
