"""Submitting a plan through submitit's SlurmExecutor (one sbatch), then waiting for and describing its jobs."""

from __future__ import annotations

import time
from pathlib import Path

import submitit

from slurm.plan import Plan


def executor(plan: Plan) -> submitit.SlurmExecutor:
    slurm = submitit.SlurmExecutor(folder=plan.log_dir, max_num_timeout=plan.max_requeues)
    slurm.update_parameters(**plan.parameters)
    return slurm


def submit(plan: Plan) -> list[submitit.Job]:
    """One sbatch: a single job, or an array with one element per run."""
    slurm = executor(plan)
    calls = plan.callables()
    if len(calls) == 1:
        return [slurm.submit(calls[0])]
    with slurm.batch():
        jobs = [slurm.submit(call) for call in calls]
    return jobs


def wait(jobs: list[submitit.Job], poll_s: float = 5.0) -> None:
    """Until every job has a result or has left the queue (asks sacct each time: submitit alone may take minutes)."""
    while not all(job.done(force_check=True) for job in jobs):
        time.sleep(poll_s)


def describe_jobs(plan: Plan, jobs: list[submitit.Job]) -> str:
    tasks = plan.parameters["nodes"] * plan.parameters["ntasks_per_node"]
    lines = []
    for run, job in zip(plan.runs, jobs):
        lines.append(f"job {job.job_id}: {tasks} task(s) → run dir {Path(run.output_dir).absolute()}")
        others = f"; rank r: {job.paths.folder}/{job.job_id}_<r>_log.out|err" if tasks > 1 else ""
        lines.append(f"  logs: {job.paths.stdout} and .err (rank 0){others}")
    if len(jobs) > 1:
        lines.append(f"W&B group: {plan.group}")
    return "\n".join(lines)
