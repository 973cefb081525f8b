"""`ShardLoader`: batches for the current epoch, and a progress the trainer saves and restores."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_shards.sample import Sample
from data_shards.stream.dataset import DealtStream
from data_shards.stream.reader import Skipped

CHECKED_KEYS = ("seed", "num_samples", "sample_fraction", "fingerprint")


class MicroBatches(IterableDataset):
    """The stream's micro-batches, whole, for a DataLoader without its own batching (each worker yields the
    batches the schedule gives it, so a short batch at the end of a strip is never merged with the next)."""

    def __init__(self, stream: DealtStream):
        super().__init__()
        self.stream = stream

    def __iter__(self) -> Iterator[list[Sample | Skipped]]:
        info = get_worker_info()
        return self.stream.iter_batches(*((info.id, info.num_workers) if info else (0, 1)))


class CountingCollate:
    """Runs in the worker: counts the skipped samples and drops their stand-ins."""

    def __init__(self, collate_fn: Callable[[list[Sample]], Any] | None):
        self.collate_fn = collate_fn

    def __call__(self, items: list[Sample | Skipped]) -> tuple[int, Any]:
        samples = [item for item in items if not isinstance(item, Skipped)]
        return len(items) - len(samples), self.collate_fn(samples) if self.collate_fn else samples


def ignore_stop_signals(_worker_id: int) -> None:
    """SLURM signals every process of a job step: the main process checkpoints; workers must not die first."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class ShardLoader:
    def __init__(
        self,
        stream: DealtStream,
        num_workers: int = 0,
        collate_fn=None,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        self.stream = stream
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.stream.start_epoch(epoch)

    def rewind(self) -> None:
        self.stream.rewind()

    def __len__(self) -> int:
        """Micro-batches left in the epoch."""
        return self.stream.schedule().total_batches - self.stream.batches

    def __iter__(self) -> Iterator[Any]:
        loader = DataLoader(
            MicroBatches(self.stream),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=CountingCollate(self.collate_fn),
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_stop_signals,
        )
        batches = iter(loader)
        try:
            for skipped, batch in batches:
                self.skipped += skipped
                self.stream.batches += 1
                yield batch
        finally:
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()  # now, not when a kept exception's traceback is collected (5 s per worker)

    def state_dict(self) -> dict[str, Any]:
        """The same on every rank: the deal and each rank's progress in it are functions of shared values."""
        return {
            **self.stream.progress(),
            "seed": self.stream.config.seed,
            "num_samples": self.stream.num_samples,
            "sample_fraction": self.stream.config.sample_fraction,
            "world_size": self.stream.world_size,
            "fingerprint": self.stream.index.get("source", {}).get("fingerprint"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {"sample_fraction": 1.0, **state}  # states saved before sample_fraction read every sample
        now = self.state_dict()
        mismatched = [key for key in CHECKED_KEYS if saved.get(key) != now[key]]
        if mismatched:
            details = ", ".join(f"{k}: saved {saved.get(k)!r} now {now[k]!r}" for k in mismatched)
            raise ValueError(f"cannot resume the data stream, it changed ({details})")
        self.stream.restore(state)
