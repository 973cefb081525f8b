"""Fault injection for tests, switched on from outside the loop: `train.callbacks=[trainer.testing.faults:Faults]`
with `SHARDTUNE_FAULTS="nan_micro_steps=3,4 signal_step=5 exit_step=11"` in the environment (which every launcher
passes on to its ranks).

- nan_micro_steps: rank 0's loss becomes NaN at these micro-steps (1-based);
- signal_step: rank 0 sends itself SIGUSR2 (a preemption warning) during this optimizer step;
- exit_step: every rank dies (os._exit) right after this optimizer step, as a killed job would.
"""

from __future__ import annotations

import logging
import os
import signal

from trainer.train.callbacks import Callback

ENVIRONMENT = "SHARDTUNE_FAULTS"
CALLBACK = "trainer.testing.faults:Faults"  # for train.callbacks
FAULT_EXIT_CODE = 75
log = logging.getLogger("shardtune")


def parse(text: str) -> dict[str, list[int]]:
    """`"a=1,2 b=3"` → {"a": [1, 2], "b": [3]}."""
    faults = {}
    for item in text.split():
        name, _, values = item.partition("=")
        faults[name] = [int(value) for value in values.split(",") if value]
    return faults


class Faults(Callback):
    def __init__(self, spec: str | None = None):
        faults = parse(os.environ.get(ENVIRONMENT, "") if spec is None else spec)
        unknown = set(faults) - {"nan_micro_steps", "signal_step", "exit_step"}
        if unknown:
            raise ValueError(f"{ENVIRONMENT}: unknown faults {sorted(unknown)}")
        self.nan_micro_steps = set(faults.get("nan_micro_steps", []))
        self.signal_steps = set(faults.get("signal_step", []))
        self.exit_steps = set(faults.get("exit_step", []))
        self.micro_steps = 0

    def on_micro_loss(self, trainer, loss):
        self.micro_steps += 1
        if trainer.world.is_main and self.micro_steps in self.nan_micro_steps:
            return loss * float("nan")
        return loss

    def on_step_boundary(self, trainer) -> None:
        if trainer.world.is_main and trainer.state.step + 1 in self.signal_steps:
            os.kill(os.getpid(), signal.SIGUSR2)

    def on_step_end(self, trainer) -> None:
        if trainer.state.step in self.exit_steps:
            log.warning("fault exit_step=%d: dying now, as a killed job would", trainer.state.step)
            logging.shutdown()
            os._exit(FAULT_EXIT_CODE)
