"""Starting one fold's training or evaluation: in this process for one rank, else under a launcher."""

from __future__ import annotations

import subprocess
from pathlib import Path

from trainer.distributed.launchers import deepspeed_command, torchrun_command

ROOT = Path(__file__).resolve().parents[2]


def run_training(config: Path, overrides: list[str], ranks: int) -> int:
    argv = ["--config", str(config), *overrides]
    if ranks == 1:
        from trainer.train.cli import main

        return main(argv)
    return subprocess.run(deepspeed_command(ranks, ROOT / "launch/train.py", argv)).returncode


def run_evaluation(argv: list[str], ranks: int) -> int:
    if ranks == 1:
        from trainer.evaluate.run import main

        return main(argv)
    return subprocess.run(torchrun_command(ranks, ROOT / "launch/evaluate.py", argv)).returncode
