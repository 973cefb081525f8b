"""Checkpoints: DeepSpeed state + trainer state (step, epoch, stream position, RNG) in one directory.

Where each file goes is `trainer.run_folder`'s. The `complete` marker is written, and `latest` replaced
atomically, only after every rank has written. Old checkpoints beyond `keep_last` are pruned, except
the best by the configured metric.

With `frozen_from_base` (LoRA, QLoRA) the frozen weights are left out of DeepSpeed's files: they are the base
model's, which a resume loads again from `model.path`. That keeps a 7B LoRA checkpoint at the adapter's size, and
it is what makes QLoRA resumable at all: bitsandbytes' packed weights save quantisation states under names a
strict load refuses. The load is then not strict, and checks instead that every trained tensor was in the files.

A checkpoint records the data-parallel world size it was written with. Resumed on another one, it is loaded through
a universal copy made once beside its files (`trainer.train.universal`), which re-partitions the optimizer state.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.run_folder import (
    RUN_CONFIG,
    Checkpoint,
    CheckpointError,
    RunFolder,
    resolve_checkpoint,
    tag_for,
    write_atomic,
)
from trainer.train.state import TrainerState, rng_state, set_rng_state
from trainer.train.universal import (
    UNIVERSAL,
    WORLD_SIZE,
    check_complete,
    loading_universal,
    needs_universal,
    prepare,
    repair_zero3_state,
    saved_world_size,
)

log = logging.getLogger("shardtune")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointManager:
    def __init__(
        self,
        run_dir: Path,
        rank: int,
        keep_last: int,
        best_metric: str,
        best_mode: str,
        frozen_from_base: bool = False,
    ):
        self.run = RunFolder(run_dir)
        self.frozen_from_base = frozen_from_base
        self.root = self.run.checkpoints
        self.rank = rank
        self.keep_last = keep_last
        self.best_metric = best_metric
        self.best_mode = best_mode

    def save(self, engine, state: TrainerState, adapter_saver=None) -> Path:
        tag = tag_for(state.step)
        checkpoint = self.run.checkpoint(tag)
        engine.save_checkpoint(
            str(self.root), tag=tag, save_latest=False, exclude_frozen_parameters=self.frozen_from_base
        )
        torch.save({"rng": rng_state(), "stream": state.stream}, checkpoint.rank_state(self.rank))
        if adapter_saver is not None:
            adapter_saver(checkpoint.adapter)
        barrier()
        if self.rank == 0:
            saved = {**asdict(state), WORLD_SIZE: engine.seq_dp_world_size}
            checkpoint.trainer_state.write_text(json.dumps(saved, indent=1))
            checkpoint.mark_complete()
            self.update_best(tag, state.metrics)
            self.run.set_latest(tag)
            self.prune()
        barrier()
        log.info("checkpoint %s written", checkpoint.path)
        return checkpoint.path

    def update_best(self, tag: str, metrics: dict[str, float]) -> None:
        if not self.best_metric or self.best_metric not in metrics:
            return
        value = metrics[self.best_metric]
        best = self.best()
        better = best is None or (value < best["value"] if self.best_mode == "min" else value > best["value"])
        if better:
            write_atomic(self.run.best_file, json.dumps({"tag": tag, "metric": self.best_metric, "value": value}))

    def best(self) -> dict[str, Any] | None:
        return self.run.best()

    def prune(self) -> None:
        tags = sorted(p.name for p in self.root.glob("step*") if p.is_dir())
        complete = [t for t in tags if self.run.checkpoint(t).is_complete]
        keep = set(complete[-self.keep_last :]) if self.keep_last > 0 else set(complete[-1:])
        best = self.best()
        if best:
            keep.add(best["tag"])
        latest = self.latest_tag()
        for tag in tags:
            if tag not in keep and tag != latest and (tag in complete or tag < (latest or "")):
                shutil.rmtree(self.root / tag, ignore_errors=True)

    def latest_tag(self) -> str | None:
        return self.run.latest_tag()

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint directory to resume from: `auto` (latest, if any), `none`, `RUN:best`, `RUN:latest`,
        or a path (a run folder means its latest)."""
        if resume == "none":
            return None
        if resume == "auto":
            latest = self.run.latest()
            return latest.path if latest else None
        try:
            checkpoint = Checkpoint(resolve_checkpoint(resume))
        except CheckpointError as error:
            raise FileNotFoundError(f"checkpoint.resume={resume}: {error}") from None
        if not checkpoint.path.exists():
            raise FileNotFoundError(f"checkpoint.resume: {resume} does not exist")
        if not checkpoint.is_complete:
            raise FileNotFoundError(f"checkpoint.resume={resume}: {checkpoint.path} is not a complete checkpoint")
        return checkpoint.path

    def load(self, engine, directory: Path) -> TrainerState:
        if needs_universal(engine, directory):
            self.load_universal(engine, directory)
        else:
            engine.load_checkpoint(
                str(directory.parent),
                tag=directory.name,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
                load_module_strict=not self.frozen_from_base,
            )
        if self.frozen_from_base:
            check_trained_tensors_saved(engine.module, directory)
        checkpoint = Checkpoint(directory)
        fields = json.loads(checkpoint.trainer_state.read_text())
        fields.pop(WORLD_SIZE, None)
        state = TrainerState(**fields)
        own = checkpoint.rank_state(self.rank)
        if own.exists():
            set_rng_state(torch.load(own, weights_only=False)["rng"])
        else:
            log.warning(
                "%s was written by %d ranks and has no RNG state for rank %d: its RNG continues from train.seed",
                directory,
                saved_world_size(directory),
                self.rank,
            )
        return state

    def load_universal(self, engine, directory: Path) -> None:
        """A checkpoint of another world size: through its universal copy (converted now, or the one made before)."""
        saved, now = saved_world_size(directory), engine.seq_dp_world_size
        log.info("%s was written by %d ranks, resuming on %d: re-partitioning the optimizer", directory, saved, now)
        folder = prepare(directory, self.rank)
        check_complete(engine.module, folder)
        try:
            with loading_universal(engine):
                path, _ = engine.load_checkpoint(
                    str(directory),
                    tag=UNIVERSAL,
                    load_optimizer_states=True,
                    load_lr_scheduler_states=True,
                    load_module_strict=not self.frozen_from_base,
                )
        except (AssertionError, OSError, RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{folder}: loading it on {now} ranks failed: {error!r}") from error
        if path is None:
            raise CheckpointError(f"{folder}: DeepSpeed found no model-states file to load on {now} ranks")
        repair_zero3_state(engine, folder)


def check_trained_tensors_saved(module, directory: Path) -> None:
    """Every trained tensor is in DeepSpeed's module file (ZeRO-0/1/2; ZeRO-3 keeps them in its partitions)."""
    path = directory / "mp_rank_00_model_states.pt"
    if not path.exists():
        return
    saved = set(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["module"] or {})
    missing = [name for name, p in module.named_parameters() if p.requires_grad and name not in saved]
    if missing:
        raise CheckpointError(f"{directory}: lacks {len(missing)} trained tensors, e.g. {missing[:3]}")


def save_adapter(model, directory: Path, rank: int, run_config: dict[str, Any] | None = None) -> None:
    """PEFT adapter (LoRA + modules_to_save), gathered from ZeRO-3 partitions first: never empty.
    `run_config` (the redacted resolved config) goes with it as RUN_CONFIG, so an adapter folder
    copied out of its run still says how it was trained (a QLoRA adapter needs its 4-bit base)."""
    from peft import get_peft_model_state_dict

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with gathered([p for _, p in trainable]):
        state = {n: p.detach().to("cpu", copy=True) for n, p in trainable} if rank == 0 else None
    if rank != 0:
        return
    adapter = get_peft_model_state_dict(model, state_dict=state)
    empty = [k for k, v in adapter.items() if v.numel() == 0]
    if not adapter or empty:
        raise RuntimeError(f"adapter state is empty ({len(adapter)} tensors, empty: {empty[:3]})")
    model.save_pretrained(str(directory), state_dict=state)
    if run_config is not None:
        (Path(directory) / RUN_CONFIG).write_text(json.dumps(run_config, indent=1))


def gathered(parameters):
    """ZeRO-3 partitions parameters across ranks: gather them for reading (a no-op otherwise)."""
    import contextlib

    if any(hasattr(p, "ds_id") for p in parameters):
        import deepspeed

        return deepspeed.zero.GatheredParameters(parameters, modifier_rank=None)
    return contextlib.nullcontext()
