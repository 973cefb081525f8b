"""The host a local SLURM cluster runs on: packages, programs, resources, ports and processes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


class ClusterError(RuntimeError):
    """SLURM cannot be started here; the message says why (and where the log is)."""


def which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")


def install_packages(packages: tuple[str, ...], timeout: float) -> None:
    """apt-get install, without letting package scripts start the system's own daemons."""
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:  # the Debian way to say "do not start services" during an install
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
            print(f"+ {' '.join(command)}", file=sys.stderr)
            done = run_quiet(command, timeout, env)
            if done.returncode:
                raise ClusterError(
                    f"`{' '.join(command)}` failed ({done.returncode}):\n{tail(done.stdout + done.stderr)}"
                )
    finally:
        if ours:
            policy.unlink(missing_ok=True)


def run_quiet(command: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as error:
        return subprocess.CompletedProcess(command, 1, "", str(error))


def node_resources() -> tuple[int, int]:
    """CPUs and memory (MiB) to declare: what `slurmd -C` sees, memory with a margin so the node is never drained."""
    done = run_quiet(["slurmd", "-C"], 30)
    cpus = re.search(r"CPUs=(\d+)", done.stdout)
    memory = re.search(r"RealMemory=(\d+)", done.stdout)
    return (int(cpus.group(1)) if cpus else os.cpu_count() or 1, int(int(memory.group(1)) * 0.9) if memory else 1024)


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child (mariadbd is)
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return False


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
