"""Rank and world discovery, in one place: torchrun, the deepspeed launcher, SLURM, or a single process.

`world_from_env()` reads whichever launcher started us and returns a small typed value;
`export_env()` writes the canonical RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
variables that torch.distributed and DeepSpeed read, so every launcher looks alike afterwards.
`release_shm_allreduce_buffer()` unlinks the shared-memory segment DeepSpeed's CPU backend never removes.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000
SHM_ROOT = Path("/dev/shm")
CANONICAL_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.rank < self.world_size:
            problems.append(f"rank {self.rank} not in [0, world_size={self.world_size})")
        if not 0 <= self.local_rank < self.local_world_size:
            problems.append(f"local_rank {self.local_rank} not in [0, local_world_size={self.local_world_size})")
        if not 0 < self.master_port < 65536:
            problems.append(f"master_port {self.master_port} is not a port")
        if problems:
            raise ValueError(f"inconsistent {self.launcher} environment: " + "; ".join(problems))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(env: Mapping[str, str] | None = None) -> WorldInfo:
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return _from_torch_env(env)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _from_slurm_env(env)
    return WorldInfo(0, 0, 1, 1, "127.0.0.1", int(env.get("MASTER_PORT") or free_port()), "single")


def _from_torch_env(env: Mapping[str, str]) -> WorldInfo:
    launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed" if "CROSS_RANK" in env else "env"
    world = _int(env, "WORLD_SIZE")
    return WorldInfo(
        rank=_int(env, "RANK"),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        world_size=world,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or world),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(env.get("MASTER_PORT", 29500)),
        launcher=launcher,
    )


def _from_slurm_env(env: Mapping[str, str]) -> WorldInfo:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("SLURM environment without SLURM_JOB_NODELIST: cannot find the master host")
    tasks_per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1")
    return WorldInfo(
        rank=_int(env, "SLURM_PROCID"),
        local_rank=int(env.get("SLURM_LOCALID", 0)),
        world_size=_int(env, "SLURM_NTASKS"),
        local_world_size=int(re.match(r"\d+", tasks_per_node).group()),
        master_addr=expand_nodelist(nodelist)[0],
        master_port=port_for_job(env.get("SLURM_JOB_ID", "0")),
        launcher="slurm",
    )


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise ValueError(f"environment variable {name}={env.get(name)!r} is not an integer") from None


def port_for_job(job_id: str) -> int:
    """A port every task of a job derives alike (and neighbouring jobs differ on)."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return SLURM_PORT_BASE + int(digits) % SLURM_PORT_SPAN


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host lists: `gpu[01-04,07],login1` → gpu01 … gpu04, gpu07, login1."""
    hosts = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            start, _, end = part.partition("-")
            width = len(start)
            for number in range(int(start), int(end or start) + 1):
                hosts.append(f"{prefix}{number:0{width}d}{suffix}")
    if not hosts:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    return hosts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def export_env(info: WorldInfo, env: dict | None = None) -> None:
    """Write the canonical variables torch.distributed and DeepSpeed read."""
    env = os.environ if env is None else env
    values = (info.rank, info.local_rank, info.world_size, info.local_world_size, info.master_addr, info.master_port)
    env.update({name: str(value) for name, value in zip(CANONICAL_VARIABLES, values)})


def shm_allreduce_buffer(info: WorldInfo, uid: int | None = None) -> Path:
    """Where DeepSpeed's CPU shared-memory all-reduce keeps this rank's 69 MB workspace (ops/csrc/cpu/comm/shm.cpp)."""
    uid = os.getuid() if uid is None else uid
    return SHM_ROOT / f"deepspeed_allreduce_buffer_{uid}_{info.master_addr}_{info.master_port}_{info.rank}"


def release_shm_allreduce_buffer(info: WorldInfo) -> bool:
    """Unlink this rank's segment once every peer has mapped it (call after a barrier that follows init).

    DeepSpeed creates one segment per rank when all ranks share a host and never unlinks it: each run
    leaked 69 MB per rank into /dev/shm (RAM), and a later run on the same port could map a stale one.
    The mappings stay valid after unlinking, and the memory is freed when the last rank exits, however it exits.
    """
    buffer = shm_allreduce_buffer(info)
    if not buffer.exists():
        return False
    buffer.unlink(missing_ok=True)
    return True
