"""The callable submitit runs in every SLURM task: one training run, requeued (with itself) on preemption."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import submitit

from trainer.distributed.signals import PREEMPTED_EXIT_CODE
from trainer.run_folder import RunFolder


class TrainingFailed(RuntimeError):
    """The training of one task ended with an error; the message gives its rank and exit code."""


class TrainingRun(submitit.helpers.Checkpointable):
    """One training run, called once per SLURM task; requeued (with itself) on preemption or time limit.

    submitit pickles it by reference, as `slurm.job.TrainingRun`: the tasks import this module.
    """

    def __init__(self, config: str, overrides: list[str], output_dir: str, max_requeues: int):
        self.config = config
        self.overrides = list(overrides)
        self.output_dir = output_dir
        self.max_requeues = max_requeues

    def argv(self) -> list[str]:
        return ["--config", self.config, *self.overrides, "--resume", "auto"]

    def __call__(self) -> dict[str, Any]:
        from trainer.train import cli

        rank = int(os.environ.get("SLURM_PROCID", 0))
        run = RunFolder(Path(self.output_dir))
        resumed_from = run.latest_tag()
        code = cli.main(self.argv())
        result = {
            "rank": rank,
            "output_dir": self.output_dir,
            "restarts": restarts(),
            "resumed_from": resumed_from,
            "job_id": slurm_job_id(),
            "exit_code": code,
        }
        if code == 0:
            if rank == 0:
                result["summary"] = json.loads(run.summary.read_text())
            return result
        ending = job_ending()
        if ending:  # SLURM is requeueing/cancelling us: whatever broke, the job is not over; write no result
            print(
                f"[rank {rank}] training stopped with code {code} while the job is ending ({ending}); "
                "leaving without a result",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(code)
        if code == PREEMPTED_EXIT_CODE:
            self.requeue(rank)
        raise TrainingFailed(
            f"rank {rank}: training exited with code {code} (1: failed, 2: bad config); see this task's stderr log"
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """submitit calls this on rank 0 when the job is preempted or times out: requeue the same call."""
        done = restarts()
        if done >= self.max_requeues:
            print(
                f"not requeuing: {done} restarts already (--max-requeues {self.max_requeues})",
                file=sys.stderr,
                flush=True,
            )
            return None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def requeue(self, rank: int) -> None:
        """The trainer stopped on a signal submitit did not act on (SIGTERM): rank 0 requeues, all exit."""
        if rank == 0:
            if self.checkpoint() is None:
                raise TrainingFailed(
                    f"preempted after {restarts()} restarts; --max-requeues {self.max_requeues} "
                    f"reached, not requeued (resume by submitting again)"
                )
            done = subprocess.run(["scontrol", "requeue", slurm_job_id()], capture_output=True, text=True, timeout=60)
            print(
                f"preempted: scontrol requeue {slurm_job_id()} → {done.returncode} {done.stderr.strip()}",
                file=sys.stderr,
                flush=True,
            )
        # Leave without a result file: the job is not over, the requeued one will write it.
        sys.exit(PREEMPTED_EXIT_CODE)


def slurm_job_id() -> str:
    """This job's id as scontrol wants it: `123`, or `123_4` for an array element."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get("SLURM_JOB_ID", "")


def job_ending() -> str:
    """Why SLURM is ending this job ('' while it runs normally): a requeue shows as COMPLETING, Restarts+1."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "job", "-o", slurm_job_id()], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    state = re.search(r"\bJobState=(\S+)", done.stdout)
    count = re.search(r"\bRestarts=(\d+)", done.stdout)
    if state and state.group(1) != "RUNNING":
        return f"JobState={state.group(1)}"
    if count and int(count.group(1)) > restarts():
        return f"requeued (Restarts={count.group(1)})"
    return ""


def restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
