"""Checkpoints: DeepSpeed state + trainer state (step, epoch, stream position, RNG) in one directory.

Layout: `{run}/checkpoints/step00000100/` holds DeepSpeed's files, `trainer_state_rank{r}.pt` per
rank, `trainer_state.json`, `adapter/` (PEFT format, gathered under ZeRO-3) and finally a
`complete` marker. `{run}/checkpoints/latest` names the newest complete one and is replaced
atomically only after every rank has written. Old checkpoints beyond `keep_last` are pruned,
except the best by the configured metric.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("shardtune")
COMPLETE = "complete"
RUN_CONFIG = "config.resolved.json"  # in the run folder, and a copy in each adapter folder
LATEST = "latest"
BEST = "best.json"


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    stream: dict[str, Any] = field(default_factory=dict)
    bad_steps: int = 0
    skipped_steps: int = 0
    dropped_samples: int = 0
    config_hash: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def config_hash(config_dict: dict[str, Any]) -> str:
    """What must not change across a resume: model, data, optimizer, adapters and batch layout."""
    kept = {k: config_dict[k] for k in ("model", "data", "optimizer", "lora", "quant")}
    kept["batch"] = {k: config_dict["train"][k] for k in ("micro_batch_size", "grad_accum", "seed")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointManager:
    def __init__(self, run_dir: Path, rank: int, keep_last: int, best_metric: str, best_mode: str):
        self.root = run_dir / "checkpoints"
        self.rank = rank
        self.keep_last = keep_last
        self.best_metric = best_metric
        self.best_mode = best_mode

    def save(self, engine, state: TrainerState, adapter_saver=None) -> Path:
        tag = tag_for(state.step)
        directory = self.root / tag
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        torch.save({"rng": rng_state(), "stream": state.stream}, directory / f"trainer_state_rank{self.rank}.pt")
        if adapter_saver is not None:
            adapter_saver(directory / "adapter")
        barrier()
        if self.rank == 0:
            (directory / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))
            (directory / COMPLETE).write_text("")
            self.update_best(tag, state.metrics)
            write_atomic(self.root / LATEST, tag)
            self.prune()
        barrier()
        log.info("checkpoint %s written", directory)
        return directory

    def update_best(self, tag: str, metrics: dict[str, float]) -> None:
        if not self.best_metric or self.best_metric not in metrics:
            return
        value = metrics[self.best_metric]
        best = self.best()
        better = best is None or (value < best["value"] if self.best_mode == "min" else value > best["value"])
        if better:
            write_atomic(self.root / BEST, json.dumps({"tag": tag, "metric": self.best_metric, "value": value}))

    def best(self) -> dict[str, Any] | None:
        path = self.root / BEST
        return json.loads(path.read_text()) if path.exists() else None

    def prune(self) -> None:
        tags = sorted(p.name for p in self.root.glob("step*") if p.is_dir())
        complete = [t for t in tags if (self.root / t / COMPLETE).exists()]
        keep = set(complete[-self.keep_last:]) if self.keep_last > 0 else set(complete[-1:])
        best = self.best()
        if best:
            keep.add(best["tag"])
        latest = self.latest_tag()
        for tag in tags:
            if tag not in keep and tag != latest and (tag in complete or tag < (latest or "")):
                shutil.rmtree(self.root / tag, ignore_errors=True)

    def latest_tag(self) -> str | None:
        path = self.root / LATEST
        return path.read_text().strip() if path.exists() else None

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint directory to resume from: `auto` (latest, if any), `none`, or a path."""
        if resume == "none":
            return None
        if resume == "auto":
            tag = self.latest_tag()
            return self.root / tag if tag else None
        path = Path(resume)
        if (path / LATEST).exists():
            path = path / (path / LATEST).read_text().strip()
        if not (path / COMPLETE).exists():
            raise FileNotFoundError(f"checkpoint.resume={resume}: {path} is not a complete checkpoint")
        return path

    def load(self, engine, directory: Path) -> TrainerState:
        engine.load_checkpoint(str(directory.parent), tag=directory.name, load_optimizer_states=True,
                               load_lr_scheduler_states=True)
        state = TrainerState(**json.loads((directory / "trainer_state.json").read_text()))
        own = directory / f"trainer_state_rank{self.rank}.pt"
        if own.exists():
            set_rng_state(torch.load(own, weights_only=False)["rng"])
        else:
            log.warning("%s has no RNG state for rank %d (world size changed?): RNG not restored", directory, self.rank)
        return state


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
