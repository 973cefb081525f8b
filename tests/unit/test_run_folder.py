"""Naming a checkpoint: `RUN:best`, `RUN:latest`, a bare RUN, or a checkpoint / adapter folder, read in one place."""

import json
import re
from pathlib import Path

import pytest

from trainer.evaluate.model_source import UsageError, find_adapter
from trainer.export.source import ExportError, resolve_source
from trainer.kfold.cli import chosen_checkpoint
from trainer.run_folder import CheckpointError, RunFolder, resolve_checkpoint
from trainer.train.checkpoints import CheckpointManager

NO_BEST = "no best checkpoint: checkpoint.best_metric was not set or never evaluated"


def make_run(root: Path, tags=("step00000002", "step00000004"), best: str | None = "step00000002") -> Path:
    for tag in tags:
        (root / "checkpoints" / tag / "adapter").mkdir(parents=True)
        (root / "checkpoints" / tag / "adapter" / "adapter_config.json").write_text("{}")
        (root / "checkpoints" / tag / "complete").write_text("")
    (root / "checkpoints" / "latest").write_text(tags[-1])
    if best:
        (root / "checkpoints" / "best.json").write_text(json.dumps({"tag": best, "metric": "eval/loss", "value": 1}))
    return root


def test_best_latest_and_a_bare_run(tmp_path):
    run = make_run(tmp_path / "run")
    assert resolve_checkpoint(f"{run}:best") == run / "checkpoints/step00000002"
    assert resolve_checkpoint(f"{run}:latest") == run / "checkpoints/step00000004"
    assert resolve_checkpoint(run) == resolve_checkpoint(f"{run}/:latest") == run / "checkpoints/step00000004"


def test_checkpoint_and_adapter_folders_are_kept_as_given(tmp_path):
    run = make_run(tmp_path / "run")
    for path in (run / "checkpoints/step00000002", run / "checkpoints/step00000002/adapter", tmp_path / "absent"):
        assert resolve_checkpoint(path) == path


def test_only_a_trailing_selector_of_a_path_that_does_not_exist_selects(tmp_path):
    run = make_run(tmp_path / "a:best" / "run")  # a ':' inside a path is a path
    assert resolve_checkpoint(f"{run}:best") == run / "checkpoints/step00000002"
    literal = tmp_path / "adapter:best"
    literal.mkdir()
    assert resolve_checkpoint(literal) == literal
    assert resolve_checkpoint(f"{run}:other") == Path(f"{run}:other")


def test_errors_name_the_run_and_why(tmp_path):
    run = make_run(tmp_path / "run", best=None)
    with pytest.raises(CheckpointError, match=NO_BEST) as error:
        resolve_checkpoint(f"{run}:best")
    assert str(run) in str(error.value)
    (run / "checkpoints/best.json").write_text(json.dumps({"tag": "step00000006", "metric": "m", "value": 0}))
    with pytest.raises(CheckpointError, match="best.json names step00000006, which is missing"):
        resolve_checkpoint(f"{run}:best")
    (run / "checkpoints/step00000004/complete").unlink()
    with pytest.raises(CheckpointError, match="latest names step00000004, which is incomplete"):
        resolve_checkpoint(run)
    with pytest.raises(CheckpointError, match=re.escape(f"run {tmp_path / 'nope'} does not exist")):
        resolve_checkpoint(f"{tmp_path / 'nope'}:latest")
    with pytest.raises(CheckpointError, match="is not a run folder"):
        resolve_checkpoint(f"{tmp_path}:latest")


def test_every_reader_uses_the_resolver(tmp_path):
    run = make_run(tmp_path / "run")
    best = run / "checkpoints/step00000002"
    assert CheckpointManager(tmp_path / "other", 0, 0, "", "min").resolve(f"{run}:best") == best
    assert find_adapter(Path(f"{run}:best")) == best / "adapter"
    assert resolve_source(Path(f"{run}:best")).adapter == best / "adapter"
    assert chosen_checkpoint(RunFolder(run), "best") == best
    assert chosen_checkpoint(RunFolder(run), "latest") == run / "checkpoints/step00000004"
    (run / "checkpoints/best.json").unlink()
    assert chosen_checkpoint(RunFolder(run), "best") == run / "checkpoints/step00000004"  # none chosen: the latest
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint.resume={run}:best: ") + ".*" + NO_BEST):
        CheckpointManager(tmp_path / "other", 0, 0, "", "min").resolve(f"{run}:best")
    with pytest.raises(UsageError, match=re.escape(f"--checkpoint {run}:best: ") + ".*" + NO_BEST):
        find_adapter(Path(f"{run}:best"))
    with pytest.raises(ExportError, match=re.escape(f"--checkpoint {run}:best: ") + ".*" + NO_BEST):
        resolve_source(Path(f"{run}:best"))
