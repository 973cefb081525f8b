"""Command lines that start several ranks on this machine: the deepspeed launcher and torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

from trainer.distributed.world import free_port


def deepspeed_command(ranks: int, script: Path, arguments: list[str]) -> list[str]:
    runner = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks)]
    return [*runner, "--master_port", str(free_port()), str(script), *arguments]


def torchrun_command(ranks: int, script: Path, arguments: list[str]) -> list[str]:
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
    return [*runner, "--master_port", str(free_port()), str(script), *arguments]
