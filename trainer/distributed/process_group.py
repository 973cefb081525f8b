"""The one place a process group starts and stops: `with process_group(world) as device: ...`.

On leaving, the group is destroyed and the launcher variables `export_env` wrote are put back as they were,
so a single-rank run inside another process (a test, a notebook) leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from trainer.distributed.world import CANONICAL_VARIABLES, WorldInfo, export_env, release_shm_allreduce_buffer


def device_for(world: WorldInfo) -> torch.device:
    return torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def start(world: WorldInfo, timeout_minutes: int) -> torch.device:
    """DeepSpeed's communication backend over NCCL (GPUs) or gloo (CPU), on this rank's device."""
    import deepspeed

    export_env(world)
    device = device_for(world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        return device
    dist.barrier()  # every rank has mapped its peers' CPU shared-memory buffers: each may unlink its own
    release_shm_allreduce_buffer(world)
    return device


# deepspeed.utils.groups keeps these process groups in module globals, and has no teardown
DEEPSPEED_GROUPS = (
    "_WORLD_GROUP",
    "_ZERO_PARAM_INTRA_PARALLEL_GROUP",
    "_DATA_PARALLEL_GROUP",
    "_MODEL_PARALLEL_GROUP",
    "_TENSOR_MODEL_PARALLEL_GROUP",
    "mesh_device",
)
DEEPSPEED_GROUP_TABLES = (
    "_EXPERT_PARALLEL_GROUP",
    "_EXPERT_PARALLEL_GROUP_RANKS",
    "_EXPERT_DATA_PARALLEL_GROUP",
    "_EXPERT_DATA_PARALLEL_GROUP_RANKS",
    "_ALL_TO_ALL_GROUP",
)


def forget_deepspeed_groups() -> None:
    """Once the world group is destroyed, DeepSpeed's cached groups name dead ones: a second run in the same
    process failed in `dist.get_global_rank` ("group is not registered"). Put them back as at import."""
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    for name in DEEPSPEED_GROUPS:
        setattr(groups, name, None)
    for name in DEEPSPEED_GROUP_TABLES:
        getattr(groups, name).clear()


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    forget_deepspeed_groups()


@contextmanager
def process_group(world: WorldInfo, required: bool = True, timeout_minutes: int = 30) -> Iterator[torch.device]:
    """This rank's device, inside a started process group (only with several ranks unless `required`)."""
    saved = {name: os.environ.get(name) for name in CANONICAL_VARIABLES}
    try:
        yield start(world, timeout_minutes) if required or world.world_size > 1 else device_for(world)
    finally:
        stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
