"""Measured peak memory of each rank, to check the planner (`trainer.plan`) against: switched on from outside
the loop with `train.callbacks=[trainer.testing.memory_probe:PeakMemory]`.

What is counted: the process's peak resident set (Linux `VmHWM`) above its resident set when the callback is
built, which is after the imports and the config and before the process group, the model and DeepSpeed.
Phases, each with its own peak (the kernel's high-water mark is reset between them), the largest over steps:
- `setup`: loading the model, DeepSpeed's initialisation and the first micro-step's forward;
- `forward_backward`: the micro-steps' forwards and backwards, with DeepSpeed's gradient reduction, until the
  step's gradients are complete;
- `optimizer_step`: DeepSpeed's optimizer step (and the step's evaluation and checkpoint, if any).
`train_peak_bytes` is the largest phase after setup.
Freed memory only leaves the resident set if the allocator returns it: run with glibc's
`MALLOC_MMAP_THRESHOLD_=65536` (the benchmark does) so that every tensor-sized block is its own mapping.
Each rank writes `{run}/memory/rank{r}.json` after every optimizer step (the latest figures win).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from trainer.run_folder import RunFolder, write_atomic
from trainer.train.callbacks import Callback

CALLBACK = "trainer.testing.memory_probe:PeakMemory"
KIB = 1024


def status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} (the memory probe needs Linux)")
    return int(match.group(1))


def reset_peak() -> None:
    """Sets the high-water mark back to the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


class PeakMemory(Callback):
    def __init__(self):
        self.baseline_kib = status_kib("VmRSS")
        reset_peak()
        self.peaks_kib: dict[str, int] = {}
        self.steps = 0

    def close_phase(self, name: str) -> None:
        """The peak since the last phase ended is `name`'s (the largest over steps)."""
        self.peaks_kib[name] = max(self.peaks_kib.get(name, 0), status_kib("VmHWM"))
        reset_peak()

    def on_micro_loss(self, trainer, loss):
        self.close_phase("setup" if "setup" not in self.peaks_kib else "forward_backward")
        return loss

    def on_gradients(self, trainer) -> None:
        self.close_phase("forward_backward")

    def on_step_end(self, trainer) -> None:
        self.close_phase("optimizer_step")
        self.steps += 1
        peaks = {name: (kib - self.baseline_kib) * KIB for name, kib in self.peaks_kib.items()}
        figures = {
            "rank": trainer.world.rank,
            "steps": self.steps,
            "baseline_bytes": self.baseline_kib * KIB,
            "setup_peak_bytes": peaks.pop("setup"),
            "train_peak_bytes": max(peaks.values()),
            "phase_peak_bytes": peaks,
        }
        folder = RunFolder(Path(trainer.config.train.output_dir)).memory
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"rank{trainer.world.rank}.json", json.dumps(figures, indent=1) + "\n")
