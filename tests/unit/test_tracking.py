"""metrics.jsonl: a fresh run starts it over, a resumed run continues it; rank 0 only."""

import json

from trainer.config.schema import TrackingSection
from trainer.run_folder import RunFolder
from trainer.train.tracking import NullTracker, make_tracker


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def log_steps(run_dir, steps: range, fresh: bool) -> None:
    tracker = make_tracker(True, RunFolder(run_dir), TrackingSection(wandb="disabled"), {}, total_steps=10, fresh=fresh)
    for step in steps:
        tracker.log({"train/loss": 1.0 / step}, step)
    tracker.close()


def test_a_resumed_run_appends_and_a_fresh_run_starts_over(tmp_path):
    log_steps(tmp_path, range(1, 4), fresh=True)
    log_steps(tmp_path, range(4, 6), fresh=False)
    assert [line["step"] for line in lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    log_steps(tmp_path, range(1, 3), fresh=True)
    assert [line["step"] for line in lines(tmp_path / "metrics.jsonl")] == [1, 2]


def test_other_ranks_write_nothing(tmp_path):
    tracker = make_tracker(False, RunFolder(tmp_path), TrackingSection(wandb="disabled"), {}, total_steps=10)
    tracker.log({"train/loss": 1.0}, 1)
    tracker.close()
    assert isinstance(tracker, NullTracker) and not list(tmp_path.iterdir())
