"""Starting one fold's training or evaluation: in this process for one rank, else under a launcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainer.distributed.world import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_training(config: Path, overrides: list[str], ranks: int) -> int:
    argv = ["--config", str(config), *overrides]
    if ranks == 1:
        from trainer.train.cli import main

        return main(argv)
    runner = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks)]
    return subprocess.run([*runner, "--master_port", str(free_port()), str(ROOT / "launch/train.py"), *argv]).returncode


def run_evaluation(argv: list[str], ranks: int) -> int:
    if ranks == 1:
        from trainer.evaluate.run import main

        return main(argv)
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
    return subprocess.run(
        [*runner, "--master_port", str(free_port()), str(ROOT / "launch/evaluate.py"), *argv]
    ).returncode
