"""A lock left by a killed JIT build of a DeepSpeed op is refused, naming the file; a live build's is waited on."""

import os
import time

import pytest

from trainer.train.jit_ops import STALE_AFTER_S, StaleBuildLockError, check_build_lock


@pytest.fixture
def lock(tmp_path, monkeypatch):
    """Where PyTorch puts the lock of a `cpu_adam` build under TORCH_EXTENSIONS_DIR (not created yet)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path / "cpu_adam" / "lock"


def test_a_lock_older_than_any_build_is_refused_naming_the_file(lock):
    lock.parent.mkdir(parents=True)
    lock.touch()
    then = time.time() - STALE_AFTER_S - 60
    os.utime(lock, (then, then))
    with pytest.raises(StaleBuildLockError, match=f"{lock}: left 31 min ago .* Delete it"):
        check_build_lock("cpu_adam")


def test_a_fresh_lock_or_none_is_left_to_pytorch(lock):
    check_build_lock("cpu_adam")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    check_build_lock("cpu_adam")
    check_build_lock("cpu_adam", now=time.time() + STALE_AFTER_S - 60)  # the same lock, 29 minutes later
    with pytest.raises(StaleBuildLockError):
        check_build_lock("cpu_adam", now=time.time() + STALE_AFTER_S + 60)
