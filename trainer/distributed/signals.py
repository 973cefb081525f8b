"""Stop cleanly on SLURM's warning signals: every rank agrees, a checkpoint is written, then we exit.

SLURM (and submitit) send SIGUSR2 or SIGTERM some time before a preemption or time limit. The
handler only records the request; the training loop all-reduces it once per optimizer step
(`trainer.train.agreement.StepAgreement`), so a signal that reaches one rank stops them all after the same
optimizer step, nobody left in a collective.
After the checkpoint, the previous handler (submitit's, which requeues the job) runs if there was
one; otherwise the process exits with `PREEMPTED_EXIT_CODE`, which `slurm/train.sbatch` turns into
`scontrol requeue`.
"""

from __future__ import annotations

import signal
from typing import Any

PREEMPTED_EXIT_CODE = 85
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preempted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint written")
        self.signum = signum
        self.step = step


class StopRequest:
    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for signum in SIGNALS:
            self.previous[signum] = signal.signal(signum, self.record)
        return self

    def __exit__(self, *_exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def record(self, signum: int, _frame) -> None:
        self.signum = signum

    def forward(self, signum: int) -> None:
        """Hand the signal to whoever handled it before us (submitit requeues there); may not return."""
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, None)
