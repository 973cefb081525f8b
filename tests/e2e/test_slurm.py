"""SLURM: the submit CLI's plan (dry run, refusals, sweeps), the sbatch template, and real jobs on a local cluster.

The real-SLURM tests start a single-node cluster once per session (`slurm.localcluster`, apt-get
installing slurm-wlm/munge/slurmdbd/mariadb when missing and running as root; opt out of the install
with SHARDTUNE_SLURM_INSTALL=0). They SKIP, with the reason, when it cannot start; set
SHARDTUNE_REQUIRE_SLURM=1 to make that a failure instead. SHARDTUNE_SLURM_DIR=DIR reuses (or
starts) a cluster in DIR and leaves it running; otherwise a private one is stopped at the end.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm import request
from slurm.cli import main, parser
from slurm.executor import submit
from slurm.job import TrainingRun
from slurm.localcluster import ClusterError, LocalCluster
from slurm.plan import Plan, RunSpec, batch_script, build_plan, expand_runs
from slurm.request import RequestError, parse_time
from trainer.testing import faults

ROOT = Path(__file__).resolve().parents[2]
NO_SLURM = {"SLURM_CONF": "/nonexistent/slurm.conf"}  # sinfo cannot answer: no partition checks


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slurm.submit", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **NO_SLURM, **(env or {})},
    )


@pytest.fixture
def no_cluster(monkeypatch):
    monkeypatch.setattr(request, "partition_limits", lambda partition: None)


# ---- the plan, without SLURM ---------------------------------------------------------------------
def test_dry_run_prints_batch_script_and_resolved_config():
    done = run_cli("--config", "configs/demo.yaml", "--nodes", "1", "--gpus-per-node", "0", "--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "#SBATCH" in out and "#SBATCH --nodes=1" in out and "#SBATCH --ntasks-per-node=1" in out
    assert "#SBATCH --requeue" in out and "#SBATCH --signal=USR2@120" in out and "#SBATCH --time=1440" in out
    assert "srun --unbuffered" in out and "-m submitit.core._submit" in out
    assert "export DS_ACCELERATOR=cpu" in out and "unset RANK LOCAL_RANK WORLD_SIZE" in out
    assert '"output_dir": "runs/demo/train"' in out and '"resume": "auto"' in out


def test_dry_run_gpu_layout_is_one_task_per_gpu():
    done = run_cli(
        "--config",
        "configs/demo.yaml",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--partition",
        "a100",
        "--account",
        "proj",
        "--qos",
        "high",
        "--time",
        "1-12:00",
        "--cpus-per-task",
        "6",
        "--dry-run",
        "tracking.api_key=SECRET",
    )
    assert done.returncode == 0, done.stderr
    for line in (
        "--nodes=2",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--partition=a100",
        "--account=proj",
        "--qos=high",
        "--time=2160",
        "--cpus-per-task=6",
    ):
        assert f"#SBATCH {line}" in done.stdout
    assert "DS_ACCELERATOR" not in done.stdout and "OMP_NUM_THREADS:-6" in done.stdout
    assert "SECRET" not in done.stdout and '"api_key": "***"' in done.stdout


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--nodes", "0"], "--nodes"),
        (["--time", "25h"], "--time"),
        (["--time", "0"], "--time"),
        (["--gpus-per-node", "-1"], "--gpus-per-node"),
        (["--gpus-per-node", "4", "--tasks-per-node", "2"], "--tasks-per-node"),
        (["--max-requeues", "-1"], "--max-requeues"),
        (["--array-folds", "1"], "--array-folds"),
        (["--array-folds", "2", "--grid", "optimizer.lr=1e-4,2e-4"], "--array-folds and --grid"),
        (["--grid", "optimizer.lr"], "--grid"),
        (["checkpoint.resume=none"], "checkpoint.resume=none"),
        (["optimizer.lrr=1"], "--config configs/demo.yaml: optimizer.lrr: unknown key"),
    ],
)
def test_impossible_requests_are_refused_naming_the_option(no_cluster, capsys, argv, option):
    layout = [] if "--gpus-per-node" in argv else ["--gpus-per-node", "0"]
    assert main(["--config", "configs/demo.yaml", "--dry-run", *layout, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot submit") and option in err


def test_every_problem_is_reported_at_once(no_cluster, capsys):
    assert main(["--config", "configs/demo.yaml", "--nodes", "0", "--time", "soon", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--nodes: must be >= 1, got 0" in err and "--time: 'soon' is not a SLURM time" in err


def test_requests_beyond_the_partition_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(
        request,
        "partition_limits",
        lambda partition: {
            "names": ["gpu"],
            "found": partition in (None, "gpu"),
            "name": "gpu",
            "nodes": 2,
            "cpus": 32,
            "gpus": 4,
        },
    )
    assert main(["--config", "configs/demo.yaml", "--nodes", "3", "--gpus-per-node", "8", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--nodes: 3 requested but partition gpu has 2 node(s)" in err
    assert "--gpus-per-node: 8 requested but partition gpu nodes have at most 4 GPU(s)" in err
    assert main(["--config", "configs/demo.yaml", "--partition", "cpu", "--dry-run"]) == 2
    assert "--partition: no partition 'cpu' (sinfo lists: gpu)" in capsys.readouterr().err
    assert main(["--config", "configs/demo.yaml", "--gpus-per-node", "4", "--cpus-per-task", "10", "--dry-run"]) == 2
    assert "4 × 10 = 40 CPUs per node requested but partition gpu nodes have 32" in capsys.readouterr().err
    assert main(["--config", "configs/demo.yaml", "--nodes", "2", "--gpus-per-node", "4", "--dry-run"]) == 0


@pytest.mark.parametrize(
    "text, minutes",
    [("90", 90), ("10:30", 11), ("24:00:00", 1440), ("2-0", 2880), ("1-12:00", 2160), ("0-00:00:59", 1)],
)
def test_slurm_time_formats(text, minutes):
    assert parse_time(text) == minutes


def test_grid_expands_to_one_run_per_combination():
    runs, group = expand_runs(
        "runs/sweep",
        "data/train",
        grid=["optimizer.lr=1e-4,2e-4", "lora.r=8,16", "train.max_steps=50", "optimizer.betas=[0.9,0.95],[0.9,0.99]"],
    )
    assert len(runs) == 8 and group == "sweep-grid"
    first = runs[0]
    assert first.name == "lr=1e-4_r=8_betas=_0.9_0.95_" and first.output_dir == f"runs/sweep/{first.name}"
    assert first.overrides == (
        "optimizer.lr=1e-4",
        "lora.r=8",
        "train.max_steps=50",
        "optimizer.betas=[0.9,0.95]",
        f"train.output_dir=runs/sweep/{first.name}",
        "tracking.group=sweep-grid",
    )
    assert len({run.output_dir for run in runs}) == 8
    clashing, _ = expand_runs(
        "out", "", grid=["optimizer.lr=1,2", "optimizer.projector_lr=3", "optimizer.vision_lr=4,5"], group="mine"
    )
    assert [run.name for run in clashing][:2] == ["lr=1_vision_lr=4", "lr=1_vision_lr=5"]
    assert clashing[0].overrides[-1] == "tracking.group=mine"  # a group set in the config wins
    same, _ = expand_runs("out", "", grid=["a.lr=1,2", "b.lr=3,4"])
    assert same[0].name == "a.lr=1_b.lr=3"  # last components clash: full keys


def test_folds_expand_to_fold_dirs_with_their_data():
    runs, group = expand_runs("runs/cv/", "runs/shards/train", folds=3)
    assert group == "cv-kfold3" and [run.name for run in runs] == ["fold0", "fold1", "fold2"]
    assert runs[2].overrides == (
        "data.train=runs/shards/fold2/train",
        "data.val=runs/shards/fold2/val",
        "train.output_dir=runs/cv/fold2",
        "tracking.group=cv-kfold3",
    )
    single, none = expand_runs("runs/one", "x/train")
    assert single == [RunSpec("", "runs/one", ())] and none == ""


def test_fold_submission_plan_is_one_array(tmp_path, no_cluster):
    for k in range(2):
        for split in ("train", "val"):
            (tmp_path / "folds" / f"fold{k}" / split).mkdir(parents=True)
    args = parser().parse_args(
        [
            "--config",
            "configs/demo.yaml",
            "--gpus-per-node",
            "0",
            "--array-folds",
            "2",
            "--fold-root",
            str(tmp_path / "folds"),
            f"train.output_dir={tmp_path}/cv",
        ]
    )
    plan = build_plan(args)
    assert [run.output_dir for run in plan.runs] == [f"{tmp_path}/cv/fold0", f"{tmp_path}/cv/fold1"]
    assert [r["data"]["val"] for r in plan.resolved] == [f"{tmp_path}/folds/fold{k}/val" for k in range(2)]
    assert {r["tracking"]["group"] for r in plan.resolved} == {"cv-kfold2"}
    script = batch_script(plan)
    assert "#SBATCH --array=0-1%2" in script and "%A_%a_0_log.out" in script
    args.fold_root = str(tmp_path / "elsewhere")
    with pytest.raises(RequestError, match="--array-folds/--fold-root: .*elsewhere/fold0/train is missing"):
        build_plan(args)


def test_preset_reaches_every_run_under_the_recipe(no_cluster):
    plan = plan_for("--gpus-per-node", "0", "--preset", "quick-test", "--grid", "optimizer.lr=1e-4,2e-4")
    assert [r["train"]["preset"] for r in plan.resolved] == ["quick-test"] * 2
    assert [(r["train"]["max_steps"], r["train"]["micro_batch_size"]) for r in plan.resolved] == [(20, 8)] * 2
    assert [r["checkpoint"]["resume"] for r in plan.resolved] == ["auto"] * 2  # submitted runs always resume
    assert all("train.preset=quick-test" in run.overrides for run in plan.runs)  # so each task's argv applies it


def test_checkpoint_requeues_itself_until_max_requeues(monkeypatch):
    import cloudpickle

    run = TrainingRun("configs/demo.yaml", ["optimizer.lr=1e-4"], "runs/x", max_requeues=2)
    assert run.argv() == ["--config", "configs/demo.yaml", "optimizer.lr=1e-4", "--resume", "auto"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    delayed = run.checkpoint()
    assert delayed.function is run and not delayed.args
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert run.checkpoint() is None
    assert b"slurm.job" in cloudpickle.dumps(run)  # pickled by reference: the job imports slurm.job


def test_sbatch_template_runs_one_task_per_gpu_and_requeues():
    from trainer.distributed.signals import PREEMPTED_EXIT_CODE

    text = (ROOT / "slurm/train.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "slurm/train.sbatch")]).returncode == 0
    sbatch = dict(
        (line.split()[1].lstrip("-") + "=").split("=")[:2] for line in text.splitlines() if line.startswith("#SBATCH ")
    )
    assert sbatch["ntasks-per-node"] == sbatch["gpus-per-node"]
    assert sbatch["signal"].startswith("USR2@") and "requeue" in sbatch and sbatch["open-mode"] == "append"
    assert 'srun --wait=120 "$PYTHON" launch/train.py --config "$CONFIG" "$@" --resume auto' in text
    assert f"PREEMPTED={PREEMPTED_EXIT_CODE}" in text
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in text


# ---- a real SLURM -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    shared = os.environ.get("SHARDTUNE_SLURM_DIR")
    cluster = LocalCluster(shared or tmp_path_factory.mktemp("slurm"), timeout=120)
    install = os.environ.get("SHARDTUNE_SLURM_INSTALL", "1") != "0"
    started = time.monotonic()
    try:
        env = cluster.start(install=install)
    except ClusterError as error:
        cluster.stop(quiet=True)
        if os.environ.get("SHARDTUNE_REQUIRE_SLURM") == "1":
            pytest.fail(f"local SLURM did not start (SHARDTUNE_REQUIRE_SLURM=1): {error}")
        pytest.skip(f"local SLURM did not start: {error}")
    print(f"\nlocal SLURM ready in {time.monotonic() - started:.1f} s ({cluster.dir})", file=sys.stderr)
    yield env
    if not shared:
        cluster.stop(quiet=True)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """SLURM_CONF for this test's sbatch/sacct/scontrol calls (submitit calls them from this process)."""
    for key, value in {**slurm_cluster, "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


def wait_done(jobs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(job.done(force_check=True) for job in jobs):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *[job.job_id for job in jobs]])
            logs = "\n".join(job.paths.stderr.read_text()[-3000:] for job in jobs if job.paths.stderr.exists())
            pytest.fail(f"SLURM jobs {[job.job_id for job in jobs]} not done after {timeout} s:\n{logs}")
        time.sleep(2)


def final_state(job, timeout: float = 60) -> str:
    """The job's state in sacct once it has left RUNNING/COMPLETING (results are written a little before)."""
    deadline = time.monotonic() + timeout
    state = job.watcher.get_state(job.job_id, mode="force")
    while state in ("RUNNING", "COMPLETING", "PENDING", "UNKNOWN") and time.monotonic() < deadline:
        time.sleep(1)
        state = job.watcher.get_state(job.job_id, mode="force")
    return state


def training(tiny_llava: Path, shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny_llava}",
        f"data.train={shards / 'train'}",
        f"data.val={shards / 'val'}",
        f"train.output_dir={run_dir}",
        "train.micro_batch_size=4",
        "data.num_workers=0",
        "eval.at_start=false",
        "eval.max_batches=2",
        "train.log_every=5",
        *extra,
    ]


def plan_for(*argv: str) -> Plan:
    return build_plan(parser().parse_args(["--config", str(ROOT / "configs/demo.yaml"), "--time", "10", *argv]))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_submitit_trains_two_tasks_on_slurm(slurm_env, tiny_llava, color_shards, tmp_path):
    run_dir = tmp_path / "run"
    plan = plan_for(
        "--gpus-per-node",
        "0",
        "--tasks-per-node",
        "2",
        *training(tiny_llava, color_shards, run_dir, "train.max_steps=20"),
    )
    (job,) = submit(plan)
    wait_done([job], 240)
    rank0, rank1 = job.results()
    assert rank0["summary"]["steps"] == 20 and rank0["summary"]["world_size"] == 2 and rank0["restarts"] == 0
    assert rank1["rank"] == 1 and rank1["exit_code"] == 0
    assert json.loads((run_dir / "train_summary.json").read_text()) == rank0["summary"]
    assert final_state(job) == "COMPLETED"  # sacct answers: accounting works, submitit sees job states
    assert (run_dir / "slurm" / job.job_id / f"{job.job_id}_1_log.err").exists()


@pytest.fixture(scope="module")
def fold_shards(tmp_path_factory) -> Path:
    from data_shards.build import BuildConfig, build
    from data_shards.split import SplitSpec
    from data_shards.synthetic import make_dataset
    from data_shards.write import ShardLayout

    root = tmp_path_factory.mktemp("folds")
    dataset = make_dataset("llava", root / "raw", n=160, seed=0, task="color")
    for k in range(2):
        build(
            BuildConfig(
                input=dataset.input,
                out=root / f"fold{k}",
                image_root=dataset.image_root,
                split=SplitSpec.parse("train=0.9,val=0.1", folds=2, fold=k),
                layout=ShardLayout(max_samples=40),
                workers=0,
                progress=False,
            )
        )
    return root


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fold_array_is_one_submission_with_a_run_dir_per_fold(slurm_env, tiny_llava, fold_shards, tmp_path):
    out = tmp_path / "cv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slurm.submit",
            "--config",
            "configs/demo.yaml",
            "--gpus-per-node",
            "0",
            "--time",
            "10",
            "--array-folds",
            "2",
            "--fold-root",
            str(fold_shards),
            "--wait",
            f"model.path={tiny_llava}",
            f"train.output_dir={out}",
            "train.max_steps=8",
            "train.micro_batch_size=4",
            "data.num_workers=0",
            "eval.at_start=false",
            "eval.max_batches=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    array = {result["job"].split("_")[0] for result in results}
    assert len(results) == 2 and len(array) == 1  # one sbatch: elements 0 and 1 of one array
    assert sorted(result["run"] for result in results) == [str(out / "fold0"), str(out / "fold1")]
    assert "2/2 job(s) done" in done.stdout and "W&B group: cv-kfold2" in done.stdout
    for k in range(2):
        assert json.loads((out / f"fold{k}" / "train_summary.json").read_text())["steps"] == 8
        resolved = json.loads((out / f"fold{k}" / "config.resolved.json").read_text())
        assert resolved["data"]["train"] == str(fold_shards / f"fold{k}" / "train")
        assert resolved["tracking"]["group"] == "cv-kfold2"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_preempted_job_is_requeued_and_resumes(slurm_env, tiny_llava, color_shards, tmp_path):
    """submitit's own test hook: SIGTERM then SIGUSR2 to every task, as a preemption does."""
    run_dir = tmp_path / "run"
    plan = plan_for(
        "--gpus-per-node",
        "0",
        "--tasks-per-node",
        "2",
        *training(tiny_llava, color_shards, run_dir, "train.max_steps=150", "checkpoint.every_steps=25"),
    )
    (job,) = submit(plan)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (
        metrics.exists() and any(json.loads(line).get("step", 0) >= 30 for line in metrics.read_text().splitlines())
    ):
        assert time.monotonic() < deadline and not job.done(), "the job never reached step 30"
        time.sleep(0.5)
    job._interrupt()
    wait_done([job], 240)
    rank0 = job.results()[0]
    assert rank0["restarts"] == 1 and rank0["resumed_from"] is not None, rank0
    assert int(rank0["resumed_from"].removeprefix("step")) >= 30  # the checkpoint written on the signal
    assert rank0["summary"]["steps"] == 150
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "train/loss" in line]
    assert logged[-1] == 150


@pytest.mark.slow
@pytest.mark.multiprocess
def test_no_requeue_past_max_requeues(slurm_env, tiny_llava, color_shards, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENVIRONMENT, "signal_step=3")  # sbatch passes the submitter's environment on
    plan = plan_for(
        "--gpus-per-node",
        "0",
        "--tasks-per-node",
        "2",
        "--max-requeues",
        "0",
        *training(
            tiny_llava, color_shards, tmp_path / "run", "train.max_steps=8", f"train.callbacks=[{faults.CALLBACK}]"
        ),
    )
    (job,) = submit(plan)
    wait_done([job], 180)
    with pytest.raises(Exception, match="Job not requeued because"):
        job.results()
    assert "not requeuing: 0 restarts already (--max-requeues 0)" in job.stderr()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step00000003"
    assert final_state(job) != "COMPLETED"


def sbatch_template(log: Path, tasks: int, env: dict, overrides: list[str]) -> str:
    """Submit slurm/train.sbatch on CPU with `tasks` ranks; the job id."""
    command = [
        "sbatch",
        "--parsable",
        "--gpus-per-node=0",
        f"--ntasks-per-node={tasks}",
        "--cpus-per-task=1",
        "--partition=debug",
        "--time=10",
        f"--output={log}",
        str(ROOT / "slurm/train.sbatch"),
        str(ROOT / "configs/demo.yaml"),
        *overrides,
    ]
    env = {**os.environ, "PYTHON": sys.executable, "DS_ACCELERATOR": "cpu", **env}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()


def wait_for_summary(job_id: str, log: Path, summary: Path, steps: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while not (summary.exists() and json.loads(summary.read_text())["steps"] == steps):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id])
            pytest.fail(f"sbatch job {job_id} did not finish:\n{log.read_text()[-3000:] if log.exists() else ''}")
        time.sleep(1)
    return json.loads(summary.read_text())


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sbatch_template_requeues_resumes_and_continues_on_fewer_tasks(slurm_env, tiny_llava, color_shards, tmp_path):
    """The plain template under real sbatch: rank 0 signals itself at step 5, exit 85 → scontrol requeue → resume.
    Then the run is submitted again with one task instead of two: `--resume auto` converts the 2-rank checkpoint
    (a requeued job keeps its submit-time task count on SLURM, so another count arrives as a new submission)."""
    run_dir, log, summary = tmp_path / "run", tmp_path / "job.out", tmp_path / "run" / "train_summary.json"
    faulty = training(tiny_llava, color_shards, run_dir, "train.max_steps=12", f"train.callbacks=[{faults.CALLBACK}]")
    job_id = sbatch_template(log, 2, {faults.ENVIRONMENT: "signal_step=5"}, faulty)
    assert wait_for_summary(job_id, log, summary, 12)["world_size"] == 2
    text = log.read_text()
    assert "preempted: checkpoint written, requeueing" in text and f"job {job_id} restart 1: 2 task(s)" in text
    assert "resumed from" in text and "at step 5" in text

    again = tmp_path / "again.out"
    second = sbatch_template(again, 1, {}, training(tiny_llava, color_shards, run_dir, "train.max_steps=16"))
    assert wait_for_summary(second, again, summary, 16)["world_size"] == 1
    text = again.read_text()
    assert f"job {second} restart 0: 1 task(s)" in text and "at step 12" in text
    assert "to a universal checkpoint" in text
    assert (run_dir / "checkpoints" / "step00000012" / "universal").is_dir()
