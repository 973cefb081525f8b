"""Diagnostic: where our trainer's step time goes. `launch/train.py` with a timer around each phase of a step.

Run it exactly like launch/train.py, under the deepspeed launcher; it trains through `trainer.train.cli.main`
with `trainer.train.trainer.Trainer` replaced by a subclass whose `micro_step` times, on every rank:

  fetch                 waiting for the loader's next batch (from the end of the previous step)
  forward               engine forward (loss)
  start_agreement       starting the asynchronous all-reduce of non-finite loss and stop flags
  backward              engine.backward (ZeRO-2 gradient reduction included)
  step                  engine.step (clipping, optimizer, schedule)
  end_optimizer_step    waiting for that all-reduce, and at log steps: metrics all-reduce, grad norm,
                        metrics.jsonl and console line

Each rank prints one line `PHASES rank R {...}`: the median milliseconds of each phase over the steps
after `PHASES_WARMUP` (environment, default 10), and their sum. The timers cost microseconds; the
figures are for diagnosis, bench_train.py times the unmodified trainer.

    deepspeed --num_gpus 2 bench/trainer_phases.py --config configs/demo.yaml model.path=... data.train=...
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script under the launcher

import trainer.train.trainer  # noqa: E402
from trainer.train.cli import main  # noqa: E402

PHASES = ("fetch", "forward", "start_agreement", "backward", "step", "end_optimizer_step")


class PhaseTrainer(trainer.train.trainer.Trainer):
    def micro_step(self, batch, last_batch):
        if not hasattr(self, "phase_seconds"):
            self.start_timing()
        else:
            self.current["fetch"] = time.perf_counter() - self.step_ended
        result = super().micro_step(batch, last_batch)
        self.step_ended = time.perf_counter()
        for phase in PHASES:
            self.phase_seconds[phase].append(self.current.pop(phase, 0.0))
        return result

    def start_timing(self) -> None:
        self.phase_seconds: dict[str, list[float]] = defaultdict(list)
        self.current: dict[str, float] = {}
        for name in ("forward", "backward", "step"):
            setattr(self.engine, name, self.timed(name, getattr(self.engine, name)))
        for name in ("start_agreement", "end_optimizer_step"):
            setattr(self, name, self.timed(name, getattr(self, name)))

    def timed(self, phase: str, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - start

        return wrapper

    def fit(self):
        summary = super().fit()
        warmup = int(os.environ.get("PHASES_WARMUP", "10"))
        medians = {phase: 1000 * statistics.median(values[warmup:]) for phase, values in self.phase_seconds.items()}
        medians["sum"] = sum(medians.values())
        print(f"PHASES rank {self.world.rank} {json.dumps({k: round(v, 2) for k, v in medians.items()})}", flush=True)
        return summary


if __name__ == "__main__":
    trainer.train.trainer.Trainer = PhaseTrainer
    sys.exit(main())
