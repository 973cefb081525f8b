"""`run_process_group` (tests/conftest.py): a timeout kills the child's whole process group, grandchildren too."""

import os
import sys
import time
from pathlib import Path

import pytest
from conftest import run_process_group

pytestmark = pytest.mark.multiprocess


def is_gone(pid: int) -> bool:
    """No such process, or only a zombie left for its new parent to reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return any(line.split()[1:2] == ["Z"] for line in status.splitlines() if line.startswith("State:"))


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_timeout_kills_the_grandchildren(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # The grandchild lets go of the output pipes: were only the child killed, the call would return at once and
    # leave `sleep` running (rather than wait the 60 s out on the pipe).
    script = f"sleep 60 >/dev/null 2>&1 </dev/null & echo $! > {pidfile}; wait"
    started = time.monotonic()
    with pytest.raises(AssertionError, match="ran past 2 s") as caught:
        run_process_group(["bash", "-c", script], dict(os.environ), timeout=2)
    elapsed = time.monotonic() - started
    assert "bash -c sleep 60" in str(caught.value)
    assert 2 <= elapsed < 30
    pid = int(pidfile.read_text())
    try:
        assert wait_gone(pid, 5), f"grandchild {pid} outlived the timeout"
    finally:
        if not is_gone(pid):
            os.kill(pid, 9)


def test_a_command_within_its_timeout_runs_in_cwd_and_returns_its_output(tmp_path):
    code = "import os, sys; print(os.getcwd()); print('to stderr', file=sys.stderr); sys.exit(3)"
    done = run_process_group([sys.executable, "-c", code], dict(os.environ), timeout=60, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (3, f"{tmp_path}\n", "to stderr\n")
