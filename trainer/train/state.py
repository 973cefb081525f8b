"""What a checkpoint carries besides DeepSpeed's own state: counters, stream position, RNG, the config hash."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


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
