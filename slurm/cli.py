"""The `python -m slurm.submit` command: parse the options, build the plan, then print it or submit it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import submitit

from slurm.executor import describe_jobs, submit, wait
from slurm.plan import Plan, batch_script, build_plan
from slurm.request import TIME_FORMATS, RequestError

DESCRIPTION = """\
Submit training to SLURM through submitit: one run, a k-fold array or a hyperparameter grid, requeued on preemption.

    python -m slurm.submit --config configs/demo.yaml --nodes 2 --gpus-per-node 8 --partition gpu \\
        --time 24:00:00 [--account A] [--qos Q] [--array-folds K | --grid key=v1,v2 ...] \\
        [--max-requeues R] [--preset NAME] [--dry-run] [section.key=value ...]

Process layout: ONE SLURM TASK PER GPU. The job asks for `--nodes N` with `--ntasks-per-node G`
(G = `--gpus-per-node`; on CPU, `--gpus-per-node 0`, it is `--tasks-per-node`, default 1) and
`--gpus-per-node G`, so the world size is N × G. srun starts every task with submitit's runner,
which unpickles a `TrainingRun` and calls it; the call runs the training entry in-process
(`trainer.train.cli.main(["--config", C, *overrides, "--resume", "auto"])`). No torchrun or deepspeed
launcher sits in between: `trainer.distributed.world.world_from_env` reads SLURM_PROCID (rank),
SLURM_LOCALID (local rank, the CUDA device: every task of a node sees the node's G GPUs),
SLURM_NTASKS (world size) and SLURM_JOB_NODELIST (its first host is the master); the master port
is derived from the job id, so the tasks of a job agree and neighbouring jobs differ. The batch
script's setup exports PYTHONPATH (this checkout), OMP_NUM_THREADS (default `--cpus-per-task`,
or 1), TOKENIZERS_PARALLELISM=false, DS_ACCELERATOR=cpu on CPU jobs, and unsets stale RANK /
WORLD_SIZE / MASTER_* variables from the submitting shell; the job runs in the submitting
directory (`--chdir`), so relative paths in the config mean what they mean here.

Where things go: the run directory is the config's `train.output_dir` (after overrides). submitit's
files (the batch script, the pickled call, one stdout/stderr log per task, the result) go to
`{output_dir}/slurm/{job_id}/`, `{job_id}_{task}_log.out|err` (`--log-dir` moves them).

Sweeps are ONE submission, a SLURM job array with one element per run, each element with the
same layout as a single run:
- `--array-folds K`: fold k trains on `{fold_root}/fold{k}/train`, validates on
  `{fold_root}/fold{k}/val` and writes `{output_dir}/fold{k}`; `--fold-root` defaults to the
  parent folder of `data.train` (demo: `runs/demo/shards/fold0/train`, ...). Build each fold with
  `python -m data_shards build ... --folds K --fold k --out {fold_root}/fold{k}`.
- `--grid optimizer.lr=1e-4,2e-4 lora.r=8,16`: the cartesian product (4 runs here), each in
  `{output_dir}/lr=1e-4_r=8`, ... (the last key component; the full key when two would clash;
  single-valued axes are plain overrides and stay out of the name). `--grid` takes every KEY=...
  word after it: write plain overrides before it.
All runs of a sweep share the W&B group `tracking.group` (default `{output_dir name}-kfold{K}` or
`{output_dir name}-grid`), and each W&B run is named after its folder.

Preemption and time limits: `TrainingRun` is a `submitit.helpers.Checkpointable`. The batch script
asks SLURM for SIGUSR2 `--signal-delay-s` seconds before the time limit; on SIGUSR2 or SIGTERM the
trainer (`trainer/distributed/signals.py`) finishes the step on every rank, writes a checkpoint and hands
the signal to submitit's handler on rank 0, which calls `TrainingRun.checkpoint()` (a
DelayedSubmission of the same call) and requeues the job (`scontrol requeue`). If the trainer
returns its preempted exit code instead (a SIGTERM, which submitit ignores), rank 0 requeues the
job itself. A task whose training stops while SLURM is already ending the job (`scontrol
requeue`, `scancel`, preemption; `scontrol show job` says so) leaves without writing a result, so
submitit never reports a stale failure for a job that is being requeued. The requeued job calls
again with `--resume auto`, so it continues from `{output_dir}/checkpoints/latest`.
`--max-requeues R` bounds the restarts (SLURM_RESTART_COUNT): past it `checkpoint()` returns None
and the job ends with an error saying so. (submitit also counts time-limit requeues against R;
with a `--time` under 10 minutes it counts every signal as a time limit.)

`--dry-run` prints the batch script submitit would write and the resolved config of every run
(secrets redacted) and submits nothing; it needs no SLURM. Impossible requests (nodes < 1, a bad
`--time`, more GPUs, CPUs or nodes than the partition has when `sinfo` can tell) fail before
submitting with one message naming every bad option.
"""


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m slurm.submit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument("--config", type=Path, required=True, help="YAML recipe (see configs/)")
    root.add_argument(
        "--preset",
        metavar="NAME|PATH",
        help="defaults under the recipe (preset < --config < overrides), as in launch/train.py; = train.preset=...",
    )
    root.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    root.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node = tasks per node (0: a CPU job)")
    root.add_argument("--tasks-per-node", type=int, help="CPU jobs only: processes per node (default 1)")
    root.add_argument("--cpus-per-task", type=int, help="CPU cores per task (suggested: data.num_workers + 2)")
    root.add_argument("--mem-gb", type=int, help="memory per node in GB (default: the partition's)")
    root.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    root.add_argument("--time", default="24:00:00", help=f"time limit ({TIME_FORMATS}); default 24:00:00")
    root.add_argument("--account", help="SLURM account")
    root.add_argument("--qos", help="SLURM quality of service")
    root.add_argument("--constraint", help="SLURM node features, e.g. a100")
    root.add_argument("--job-name", default="shardtune", help="SLURM job name")
    root.add_argument("--array-folds", type=int, help="k-fold: one array element per fold (see --fold-root)")
    root.add_argument("--fold-root", help="folder holding fold{k}/train and fold{k}/val (default: data.train's parent)")
    root.add_argument(
        "--grid",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="hyperparameter grid: one array element per combination; takes every KEY=... word "
        "after it, so write plain overrides before --grid",
    )
    root.add_argument("--array-parallelism", type=int, default=64, help="array elements running at once")
    root.add_argument("--max-requeues", type=int, default=3, help="restarts after preemption or time limit (default 3)")
    root.add_argument(
        "--signal-delay-s",
        type=int,
        default=120,
        help="SIGUSR2 this many seconds before the time limit, to checkpoint and requeue",
    )
    root.add_argument("--setup", action="append", default=[], help="shell line run before srun (e.g. module load)")
    root.add_argument("--log-dir", type=Path, help="submitit's folder (default {output_dir}/slurm)")
    root.add_argument(
        "--dry-run", action="store_true", help="print the batch script and resolved config; submit nothing"
    )
    root.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    root.add_argument("overrides", nargs="*", help="section.key=value training overrides, e.g. optimizer.lr=2e-5")
    return root


def redacted(overrides: tuple[str, ...]) -> list[str]:
    """Overrides as they may be printed: secret keys (tracking.api_key) shown as ***."""
    from trainer.config.fields import walk_fields
    from trainer.config.schema import TrainConfig

    secret = {key for key, f, _ in walk_fields(TrainConfig) if f.metadata.get("secret")}
    return [f"{item.partition('=')[0]}=***" if item.partition("=")[0].strip() in secret else item for item in overrides]


def print_dry_run(plan: Plan) -> None:
    """The batch script submitit would write, then every run's overrides and resolved config."""
    print(f"# batch script ({len(plan.runs)} run(s); submitit's folder {plan.log_dir})")
    print(batch_script(plan))
    for run, resolved in zip(plan.runs, plan.resolved):
        print(
            f"# run {run.name or '(single)'}: {run.output_dir}\n# overrides: {' '.join(redacted(run.overrides)) or '-'}"
        )
        print(json.dumps(resolved, indent=1))


def report_results(plan: Plan, jobs: list[submitit.Job], started: float) -> int:
    """One JSON line per finished job (its rank 0 result), the failures on stderr; 1 when any failed."""
    failed = 0
    for run, job in zip(plan.runs, jobs):
        try:
            print(json.dumps({"job": job.job_id, "run": run.output_dir, **job.results()[0]}))
        except Exception as error:  # submitit re-raises the task's failure: report it, go on with the others
            failed += 1
            print(f"job {job.job_id} ({run.output_dir}) failed: {error}", file=sys.stderr)
    print(f"{len(jobs) - failed}/{len(jobs)} job(s) done in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        plan = build_plan(args)
    except RequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print_dry_run(plan)
        return 0
    started = time.monotonic()
    try:
        jobs = submit(plan)
    except (RuntimeError, OSError) as error:  # FailedSubmissionError is a RuntimeError
        print(f"error: sbatch failed: {error}", file=sys.stderr)
        return 1
    print(describe_jobs(plan, jobs), flush=True)
    if not args.wait:
        return 0
    wait(jobs)
    return report_results(plan, jobs, started)
