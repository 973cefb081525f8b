"""Submit training to SLURM through submitit: one run, a k-fold array or a hyperparameter grid, requeued on preemption.

    python -m slurm.submit --config configs/demo.yaml --nodes 2 --gpus-per-node 8 --partition gpu \\
        --time 24:00:00 [--account A] [--qos Q] [--array-folds K | --grid key=v1,v2 ...] \\
        [--max-requeues R] [--dry-run] [section.key=value ...]

Process layout: ONE SLURM TASK PER GPU. The job asks for `--nodes N` with `--ntasks-per-node G`
(G = `--gpus-per-node`; on CPU, `--gpus-per-node 0`, it is `--tasks-per-node`, default 1) and
`--gpus-per-node G`, so the world size is N × G. srun starts every task with submitit's runner,
which unpickles a `TrainingRun` and calls it; the call runs the training entry in-process
(`trainer.cli.main(["--config", C, *overrides, "--resume", "auto"])`). No torchrun or deepspeed
launcher sits in between: `trainer.distributed.world_from_env` reads SLURM_PROCID (rank),
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
trainer (`trainer/preemption.py`) finishes the step on every rank, writes a checkpoint and hands
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
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

ROOT = Path(__file__).resolve().parents[1]
PREEMPTED_EXIT_CODE = 85  # trainer.preemption.PREEMPTED_EXIT_CODE (not imported here: it pulls in torch)
STALE_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


class RequestError(ValueError):
    """An impossible or malformed request; the message names every bad option."""

    def __init__(self, problems: list[str]):
        super().__init__("cannot submit:\n  " + "\n  ".join(problems))
        self.problems = problems


class TrainingFailed(RuntimeError):
    pass


# ---- the submitted callable -------------------------------------------------------------------
class TrainingRun(submitit.helpers.Checkpointable):
    """One training run, called once per SLURM task; requeued (with itself) on preemption or time limit."""

    def __init__(self, config: str, overrides: list[str], output_dir: str, max_requeues: int):
        self.config = config
        self.overrides = list(overrides)
        self.output_dir = output_dir
        self.max_requeues = max_requeues

    def argv(self) -> list[str]:
        return ["--config", self.config, *self.overrides, "--resume", "auto"]

    def __call__(self) -> dict[str, Any]:
        from trainer import cli

        rank = int(os.environ.get("SLURM_PROCID", 0))
        latest = Path(self.output_dir) / "checkpoints" / "latest"
        resumed_from = latest.read_text().strip() if latest.exists() else None
        code = cli.main(self.argv())
        result = {"rank": rank, "output_dir": self.output_dir, "restarts": restarts(), "resumed_from": resumed_from,
                  "job_id": slurm_job_id(), "exit_code": code}
        if code == 0:
            summary = Path(self.output_dir) / "train_summary.json"
            if rank == 0:
                result["summary"] = json.loads(summary.read_text())
            return result
        ending = job_ending()
        if ending:  # SLURM is requeueing/cancelling us: whatever broke, the job is not over; write no result
            print(f"[rank {rank}] training stopped with code {code} while the job is ending ({ending}); "
                  "leaving without a result", file=sys.stderr, flush=True)
            sys.exit(code)
        if code == PREEMPTED_EXIT_CODE:
            self.requeue(rank)
        raise TrainingFailed(f"rank {rank}: training exited with code {code} (1: failed, 2: bad config); "
                             f"see this task's stderr log")

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """submitit calls this on rank 0 when the job is preempted or times out: requeue the same call."""
        done = restarts()
        if done >= self.max_requeues:
            print(f"not requeuing: {done} restarts already (--max-requeues {self.max_requeues})", file=sys.stderr,
                  flush=True)
            return None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def requeue(self, rank: int) -> None:
        """The trainer stopped on a signal submitit did not act on (SIGTERM): rank 0 requeues, all exit."""
        if rank == 0:
            if self.checkpoint() is None:
                raise TrainingFailed(f"preempted after {restarts()} restarts; --max-requeues {self.max_requeues} "
                                     f"reached, not requeued (resume by submitting again)")
            done = subprocess.run(["scontrol", "requeue", slurm_job_id()], capture_output=True, text=True, timeout=60)
            print(f"preempted: scontrol requeue {slurm_job_id()} → {done.returncode} {done.stderr.strip()}",
                  file=sys.stderr, flush=True)
        # Leave without a result file: the job is not over, the requeued one will write it.
        sys.exit(PREEMPTED_EXIT_CODE)


def slurm_job_id() -> str:
    """This job's id as scontrol wants it: `123`, or `123_4` for an array element."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get("SLURM_JOB_ID", "")


def job_ending() -> str:
    """Why SLURM is ending this job ('' while it runs normally): a requeue shows as COMPLETING, Restarts+1."""
    try:
        done = subprocess.run(["scontrol", "show", "job", "-o", slurm_job_id()], capture_output=True, text=True,
                              timeout=30)
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


# ---- planning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    name: str  # "" for a single run; "fold0"; "lr=0.0001_r=8"
    output_dir: str
    overrides: tuple[str, ...]


@dataclass
class Plan:
    config: str
    runs: list[RunSpec]
    group: str
    parameters: dict[str, Any]
    log_dir: str
    max_requeues: int
    resolved: list[dict[str, Any]] = field(default_factory=list)

    def callables(self) -> list[TrainingRun]:
        return [TrainingRun(self.config, list(run.overrides), run.output_dir, self.max_requeues) for run in self.runs]


def parse_time(text: str) -> int:
    """SLURM's --time formats → whole minutes (rounded up); RequestError names --time."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise RequestError([f"--time: {text!r} is not a SLURM time ({TIME_FORMATS})"])
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # MM:SS
        seconds = int(first) * 60 + int(second)
    else:  # MM
        seconds = int(first) * 60
    if seconds <= 0:
        raise RequestError([f"--time: {text!r} is no time at all"])
    return -(-seconds // 60)


def split_values(text: str) -> list[str]:
    """`1e-4,2e-4` → two values; commas inside [..] (a YAML list) do not split."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return values + [current]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    axes, problems = [], []
    for item in items:
        key, sep, text = item.partition("=")
        values = [v.strip() for v in split_values(text)] if sep else []
        if not sep or not key or not all(values):
            problems.append(f"--grid: {item!r} is not section.key=value1,value2,...")
        elif key in dict(axes):
            problems.append(f"--grid: {key} given twice")
        else:
            axes.append((key.strip(), values))
    if problems:
        raise RequestError(problems)
    return axes


def safe(text: str) -> str:
    return re.sub(r"[^\w.=+-]", "_", text)


def grid_runs(axes: list[tuple[str, list[str]]], output_dir: str) -> list[RunSpec]:
    varying = [key for key, values in axes if len(values) > 1]
    short = [key.rsplit(".", 1)[-1] for key in varying]
    label = dict(zip(varying, short if len(set(short)) == len(short) else varying))
    runs = []
    for combination in itertools.product(*[values for _, values in axes]):
        chosen = list(zip([key for key, _ in axes], combination))
        name = "_".join(f"{label[key]}={safe(value)}" for key, value in chosen if key in label) or "run"
        runs.append(RunSpec(name, f"{output_dir}/{name}", tuple(f"{key}={value}" for key, value in chosen)))
    return runs


def fold_runs(folds: int, fold_root: str, output_dir: str) -> list[RunSpec]:
    return [RunSpec(f"fold{k}", f"{output_dir}/fold{k}",
                    (f"data.train={fold_root}/fold{k}/train", f"data.val={fold_root}/fold{k}/val"))
            for k in range(folds)]


def expand_runs(output_dir: str, data_train: str, folds: int = 0, fold_root: str | None = None,
                grid: list[str] | None = None, group: str = "") -> tuple[list[RunSpec], str]:
    """Which runs one submission makes, with their output dirs and per-run overrides, and the W&B group."""
    output_dir = output_dir.rstrip("/") or "."
    if folds:
        root = (fold_root or str(Path(data_train).parent)).rstrip("/")
        runs, kind = fold_runs(folds, root, output_dir), f"kfold{folds}"
    elif grid:
        runs, kind = grid_runs(parse_grid(grid), output_dir), "grid"
    else:
        return [RunSpec("", output_dir, ())], group
    group = group or f"{Path(output_dir).resolve().name}-{kind}"
    return [RunSpec(run.name, run.output_dir, (*run.overrides, f"train.output_dir={run.output_dir}",
                                               f"tracking.group={group}")) for run in runs], group


def check_request(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.nodes < 1:
        problems.append(f"--nodes: must be >= 1, got {args.nodes}")
    if args.gpus_per_node < 0:
        problems.append(f"--gpus-per-node: must be >= 0, got {args.gpus_per_node}")
    if args.tasks_per_node is not None:
        if args.tasks_per_node < 1:
            problems.append(f"--tasks-per-node: must be >= 1, got {args.tasks_per_node}")
        elif args.gpus_per_node > 0 and args.tasks_per_node != args.gpus_per_node:
            problems.append(f"--tasks-per-node {args.tasks_per_node} with --gpus-per-node {args.gpus_per_node}: the "
                            "layout is one task per GPU; leave --tasks-per-node for CPU jobs (--gpus-per-node 0)")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        problems.append(f"--cpus-per-task: must be >= 1, got {args.cpus_per_task}")
    if args.max_requeues < 0:
        problems.append(f"--max-requeues: must be >= 0, got {args.max_requeues}")
    if args.array_folds is not None and args.array_folds < 2:
        problems.append(f"--array-folds: k-fold needs at least 2 folds, got {args.array_folds}")
    if args.array_folds and args.grid:
        problems.append("--array-folds and --grid: one sweep per submission, pick one")
    if args.fold_root and not args.array_folds:
        problems.append("--fold-root: only meaningful with --array-folds")
    try:
        parse_time(args.time)
    except RequestError as error:
        problems += error.problems
    if args.grid:
        try:
            parse_grid(args.grid)
        except RequestError as error:
            problems += error.problems
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.strip() == "checkpoint.resume" and value.strip() != "auto":
            problems.append(f"{item}: submitted runs always resume (checkpoint.resume=auto) so that a requeued job "
                            "continues; start afresh with a new train.output_dir")
    return problems


def partition_limits(partition: str | None) -> dict[str, Any] | None:
    """Nodes, CPUs and GPUs per node of the partition, from `sinfo` (None when SLURM is not reachable)."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).exists():  # sinfo would retry for a minute
        return None
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%c|%G"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode:
        return None
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 3]
    names = sorted({row[0].rstrip("*") for row in rows})
    chosen = [row for row in rows if (row[0].rstrip("*") == partition if partition else row[0].endswith("*"))]
    if not chosen:
        return {"names": names, "found": False}
    gpus = [sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", row[3])) for row in chosen]
    return {"names": names, "found": True, "name": chosen[0][0].rstrip("*"), "nodes": sum(int(row[1]) for row in chosen),
            "cpus": max(int(re.match(r"\d+", row[2]).group()) for row in chosen), "gpus": max(gpus)}


def check_against_cluster(args: argparse.Namespace, tasks_per_node: int) -> list[str]:
    limits = partition_limits(args.partition)
    if limits is None:
        return []
    if not limits["found"]:
        what = f"no partition {args.partition!r}" if args.partition else "no default partition"
        return [f"--partition: {what} (sinfo lists: {', '.join(limits['names']) or 'none'})"]
    where, problems = f"partition {limits['name']}", []
    if args.nodes > limits["nodes"]:
        problems.append(f"--nodes: {args.nodes} requested but {where} has {limits['nodes']} node(s)")
    if args.gpus_per_node > limits["gpus"]:
        problems.append(f"--gpus-per-node: {args.gpus_per_node} requested but {where} nodes have at most "
                        f"{limits['gpus']} GPU(s)")
    cpus = tasks_per_node * (args.cpus_per_task or 1)
    if cpus > limits["cpus"]:
        problems.append(f"--tasks-per-node × --cpus-per-task: {tasks_per_node} × {args.cpus_per_task or 1} = {cpus} "
                        f"CPUs per node requested but {where} nodes have {limits['cpus']}")
    return problems


def slurm_parameters(args: argparse.Namespace, tasks_per_node: int, runs: int) -> dict[str, Any]:
    threads = args.cpus_per_task or 1
    setup = [
        f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}",
        "export TOKENIZERS_PARALLELISM=false",
        *(["export DS_ACCELERATOR=cpu"] if args.gpus_per_node == 0 else []),
        f"unset {' '.join(STALE_VARIABLES)}",
        *args.setup,
    ]
    parameters: dict[str, Any] = {
        "job_name": args.job_name,
        "time": parse_time(args.time),
        "nodes": args.nodes,
        "ntasks_per_node": tasks_per_node,
        "signal_delay_s": args.signal_delay_s,
        "setup": setup,
        "additional_parameters": {"chdir": os.getcwd(), "requeue": True},
    }
    optional = {"partition": args.partition, "account": args.account, "qos": args.qos,
                "cpus_per_task": args.cpus_per_task, "constraint": args.constraint,
                "gpus_per_node": args.gpus_per_node or None, "mem": f"{args.mem_gb}GB" if args.mem_gb else None}
    parameters.update({key: value for key, value in optional.items() if value is not None})
    if runs > 1:
        parameters["array_parallelism"] = args.array_parallelism
    return parameters


def build_plan(args: argparse.Namespace) -> Plan:
    """Check the request (all of it, one error), resolve every run's config, and the sbatch parameters."""
    from trainer.config import ConfigError, load, to_dict

    problems = check_request(args)
    tasks_per_node = args.gpus_per_node if args.gpus_per_node > 0 else (args.tasks_per_node or 1)
    if not problems:
        problems += check_against_cluster(args, tasks_per_node)
    try:
        base = load(args.config, args.overrides)
    except ConfigError as error:
        raise RequestError(problems + [f"--config {args.config}: {p}" for p in error.problems]) from None
    if problems:
        raise RequestError(problems)
    runs, group = expand_runs(base.train.output_dir, base.data.train, args.array_folds or 0, args.fold_root,
                              args.grid, base.tracking.group)
    if args.array_folds:
        for run in runs:
            train = dict(o.split("=", 1) for o in run.overrides)["data.train"]
            if not Path(train).is_dir():
                problems.append(f"--array-folds/--fold-root: {train} is missing (build it with `python -m data_shards "
                                f"build ... --folds {args.array_folds} --fold {run.name[4:]} --out {Path(train).parent}`)")
    resolved = []
    for run in runs:
        try:
            resolved.append(to_dict(load(args.config, [*args.overrides, *run.overrides, "checkpoint.resume=auto"]),
                                    redact=True))
        except ConfigError as error:
            problems += [f"run {run.name or run.output_dir}: {p}" for p in error.problems]
    if problems:
        raise RequestError(problems)
    full = [RunSpec(run.name, run.output_dir, (*args.overrides, *run.overrides)) for run in runs]
    log_dir = str(Path(args.log_dir or Path(base.train.output_dir) / "slurm").absolute()) + "/%j"
    return Plan(str(args.config), full, group, slurm_parameters(args, tasks_per_node, len(runs)), log_dir,
                args.max_requeues, resolved)


def redacted(overrides: tuple[str, ...]) -> list[str]:
    """Overrides as they may be printed: secret keys (tracking.api_key) shown as ***."""
    from trainer.conftools import walk_fields
    from trainer.config import TrainConfig

    secret = {key for key, f, _ in walk_fields(TrainConfig) if f.metadata.get("secret")}
    return [f"{item.partition('=')[0]}=***" if item.partition("=")[0].strip() in secret else item for item in overrides]


# ---- submitting ---------------------------------------------------------------------------------
def batch_script(plan: Plan) -> str:
    """The sbatch file submitit writes for this plan (its own function, so no SLURM is needed)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(plan.log_dir)])
    count = {"map_count": len(plan.runs)} if len(plan.runs) > 1 else {}
    return _make_sbatch_string(command=command, folder=plan.log_dir, **plan.parameters, **count)


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


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m slurm.submit", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("--config", type=Path, required=True, help="YAML recipe (see configs/)")
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
    root.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                      help="hyperparameter grid: one array element per combination; takes every KEY=... word "
                           "after it, so write plain overrides before --grid")
    root.add_argument("--array-parallelism", type=int, default=64, help="array elements running at once")
    root.add_argument("--max-requeues", type=int, default=3, help="restarts after preemption or time limit (default 3)")
    root.add_argument("--signal-delay-s", type=int, default=120,
                      help="SIGUSR2 this many seconds before the time limit, to checkpoint and requeue")
    root.add_argument("--setup", action="append", default=[], help="shell line run before srun (e.g. module load)")
    root.add_argument("--log-dir", type=Path, help="submitit's folder (default {output_dir}/slurm)")
    root.add_argument("--dry-run", action="store_true", help="print the batch script and resolved config; submit nothing")
    root.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    root.add_argument("overrides", nargs="*", help="section.key=value training overrides, e.g. optimizer.lr=2e-5")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        plan = build_plan(args)
    except RequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# batch script ({len(plan.runs)} run(s); submitit's folder {plan.log_dir})")
        print(batch_script(plan))
        for run, resolved in zip(plan.runs, plan.resolved):
            print(f"# run {run.name or '(single)'}: {run.output_dir}\n# overrides: {' '.join(redacted(run.overrides)) or '-'}")
            print(json.dumps(resolved, indent=1))
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
    failed = 0
    for run, job in zip(plan.runs, jobs):
        try:
            print(json.dumps({"job": job.job_id, "run": run.output_dir, **job.results()[0]}))
        except Exception as error:  # submitit re-raises the task's failure: report it, go on with the others
            failed += 1
            print(f"job {job.job_id} ({run.output_dir}) failed: {error}", file=sys.stderr)
    print(f"{len(jobs) - failed}/{len(jobs)} job(s) done in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    from slurm.submit import main as module_main  # the class submitit pickles must come from slurm.submit, not __main__

    sys.exit(module_main())
