"""DeepSpeed ops built on first use (just-in-time), such as the CPU Adam of ZeRO-Offload.

PyTorch serialises such builds with a `lock` file in the op's build folder. A build killed midway (a
job cancelled during its first minute) leaves the file behind, and every later run then waits on it
forever, silently. A lock far older than any build is refused here, naming the file to delete.
"""

from __future__ import annotations

import time
from pathlib import Path

STALE_AFTER_S = 1800  # a build takes a minute or two; one holding the lock for 30 minutes is dead


class StaleBuildLockError(RuntimeError):
    pass


def check_build_lock(op_name: str, now: float | None = None) -> None:
    """Raises if the JIT build of DeepSpeed's `op_name` would wait on a stale lock; a prebuilt op needs none."""
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import _get_build_directory

    if installed_ops.get(op_name, False):
        return
    lock = Path(_get_build_directory(op_name, verbose=False)) / "lock"
    if not lock.exists():
        return
    age = (time.time() if now is None else now) - lock.stat().st_mtime
    if age > STALE_AFTER_S:
        raise StaleBuildLockError(
            f"{lock}: left {age / 60:.0f} min ago by a build of DeepSpeed's {op_name} op that "
            "did not finish; every build waits on it forever. Delete it and start again."
        )
