"""Progress of long loops: a tqdm bar on a terminal; elsewhere (SLURM logs, CI, files) a plain line every tenth of
the way, so that logs stay readable. Only the process that reports (rank 0) makes one."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

Item = TypeVar("Item")
LINES = 10  # plain lines per loop


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def progress(items: Iterable[Item], total: int, what: str, unit: str, stream: TextIO | None = None) -> Iterator[Item]:
    """`items`, reporting how many of `total` have passed: a bar on a terminal, else `LINES` lines."""
    stream = stream or sys.stderr
    if on_terminal(stream):
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=what, unit=unit, file=stream)
        return
    started, every = time.monotonic(), max(1, -(-total // LINES))
    for done, item in enumerate(items, start=1):
        yield item
        if done % every == 0 or done == total:
            elapsed = time.monotonic() - started
            print(f"[{what}] {done}/{total} {unit}s, {elapsed:.0f} s", file=stream, flush=True)


class StepBar:
    """Training's bar (rank 0, on a terminal): steps with ETA, and the last loss and tokens/s as its postfix."""

    def __init__(self, total: int, initial: int, stream: TextIO | None = None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=stream or sys.stderr)

    def update(self, step: int, record: dict) -> None:
        self.bar.update(step - self.bar.n)
        postfix = {"loss": f"{record['train/loss']:.4f}"}
        if "perf/tokens_per_s" in record:
            postfix["tok/s"] = f"{record['perf/tokens_per_s']:.0f}"
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        self.bar.close()
