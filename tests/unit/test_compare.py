"""shardtune-compare on real runs: tiny trainings (3 steps, micro batch 2) made once per module, real offline W&B files
(a requeued job killed after step 2 and resumed), the SLURM array layout `slurm.submit --array-folds 5` writes."""

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, launch_training, read_metrics
from PIL import Image

from slurm.plan import expand_runs
from trainer.compare.cli import main
from trainer.compare.sources import read_arguments
from trainer.compare.wandb_api import server_filters
from trainer.compare.wandb_files import read_wandb_runs, wandb_runs_in
from trainer.config.schema import TrackingSection
from trainer.run_folder import RunFolder
from trainer.testing.faults import FAULT_EXIT_CODE
from trainer.train.tracking import WALL_TIME, default_group, job_context, make_tracker

STEPS = 3


def overrides(tiny_llava: Path, shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny_llava}",
        f"data.train={shards / 'train'}",
        f"data.val={shards / 'val'}",
        f"train.output_dir={run_dir}",
        f"train.max_steps={STEPS}",
        "train.micro_batch_size=2",
        "train.log_every=1",
        "data.num_workers=0",
        "eval.max_batches=1",
        "eval.every_steps=2",
        "eval.at_start=false",
        "tracking.wandb=disabled",
        *extra,
    ]


def train(tiny_llava: Path, shards: Path, run_dir: Path, *extra: str, launcher="in-process", env=None, faults=""):
    result = launch_training(launcher, 1, overrides(tiny_llava, shards, run_dir, *extra), env=env, faults=faults)
    assert result.returncode == (FAULT_EXIT_CODE if faults else 0), result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def lr_runs(tiny_llava, color_shards, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lr")
    for name, lr in (("lr1e-3", "1e-3"), ("lr2e-3", "2e-3")):
        train(tiny_llava, color_shards, root / name, f"optimizer.lr={lr}")
    return root / "lr1e-3", root / "lr2e-3"


@pytest.fixture(scope="module")
def array_folder(tiny_llava, color_shards, tmp_path_factory) -> Path:
    """Five folds laid out as a SLURM array of `slurm.submit --array-folds 5` (fold folders link the same shards)."""
    root = tmp_path_factory.mktemp("kfold")
    for k in range(5):
        (root / f"data/fold{k}").mkdir(parents=True)
        for split in ("train", "val"):
            (root / f"data/fold{k}" / split).symlink_to(color_shards / split)
    runs, group = expand_runs(str(root / "lmol"), str(root / "data/fold0/train"), 5, str(root / "data"))
    assert group == "lmol-kfold5"
    for k, run in enumerate(runs):
        train(tiny_llava, color_shards, Path(run.output_dir), *run.overrides, f"train.seed={k}")
    return root / "lmol"


def compare(tmp_path: Path, *arguments: str) -> dict:
    out = tmp_path / "compare"
    assert main([*arguments, "--out", str(out)]) == 0
    return json.loads((out / "compare.json").read_text())


def last(run_dir: Path, key: str) -> float:
    return [line[key] for line in read_metrics(run_dir) if key in line][-1]


def is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG"


# --- part 1: runs side by side -------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_that_differ_in_the_learning_rate(lr_runs, tmp_path):
    low, high = lr_runs
    report = compare(tmp_path, str(low), str(high))
    assert report["differing_keys"] == ["optimizer.lr"]  # output_dir and the rest of the tracking names ignored
    rows = {row["name"]: row for row in report["runs"]}
    assert rows["lr1e-3"]["config"] == {"optimizer.lr": 1e-3} and rows["lr2e-3"]["config"] == {"optimizer.lr": 2e-3}
    for run_dir in lr_runs:
        row = rows[run_dir.name]
        assert row["state"] == "finished" and row["steps"] == STEPS and row["samples"] == STEPS * 2
        assert row["tokens"] > row["samples"] and row["tokens_per_s"] > 0 and row["wall_time_s"] > 0
        assert row["final"]["train/loss"] == pytest.approx(last(run_dir, "train/loss"))
        assert row["final"]["eval/loss"] == pytest.approx(last(run_dir, "eval/loss"))
        losses = [line["train/loss"] for line in read_metrics(run_dir) if "train/loss" in line]
        assert row["best"]["train/loss"]["value"] == pytest.approx(min(losses))
    text = (tmp_path / "compare/compare.md").read_text()
    assert "| lr1e-3 |" in text and "| lr2e-3 |" in text and "`optimizer.lr`" in text
    assert set(report["figures"]) == {"curves_by_step.png", "curves_by_samples.png"}
    for figure, panels in report["figures"].items():
        assert is_png(tmp_path / "compare" / figure) and f"![{figure}]({figure})" in text
        assert panels["train/loss"] == panels["train/lr"] == ["lr1e-3", "lr2e-3"]
        assert {"eval/loss", "eval/accuracy", "train/grad_norm", "perf/tokens_per_s"} <= set(panels)


@pytest.mark.slow
def test_a_five_fold_array_aggregates_to_mean_and_std(array_folder, tmp_path):
    report = compare(tmp_path, str(array_folder))
    assert [row["name"] for row in report["runs"]] == [f"fold{k}" for k in range(5)]
    assert report["differing_keys"] == ["data.train", "data.val", "train.seed"]
    (group,) = report["groups"]
    assert group["group"] == "lmol-kfold5" and group["runs"] == [f"fold{k}" for k in range(5)]
    finals = [last(array_folder / f"fold{k}", "eval/loss") for k in range(5)]
    spread = group["stats"]["final/eval/loss"]
    assert spread["n"] == 5 and spread["mean"] == pytest.approx(statistics.fmean(finals))
    assert spread["std"] == pytest.approx(statistics.stdev(finals)) and spread["std"] > 0
    assert group["stats"]["steps"] == {"mean": STEPS, "std": 0.0, "n": 5}
    band = ["lmol-kfold5 (mean ± std, 5 runs)"]
    assert all(panels["train/loss"] == band for panels in report["figures"].values())
    text = (tmp_path / "compare/compare.md").read_text()
    assert "## Groups" in text and "| lmol-kfold5 | 5 |" in text and " ± " in text


@pytest.mark.slow
def test_grid_folders_group_by_a_config_key_and_filters(lr_runs, array_folder, tmp_path):
    report = compare(tmp_path, str(array_folder / "fold*"), *map(str, lr_runs), "--group-by", "optimizer.lr")
    assert [(g["group"], len(g["runs"])) for g in report["groups"]] == [("optimizer.lr=0.002", 6)]  # demo.yaml's 2e-3
    grid = tmp_path / "sweep"  # a grid folder: its cells, without tracking.group, are grouped by the folder's name
    for run_dir in lr_runs:
        shutil.copytree(run_dir, grid / run_dir.name, ignore=shutil.ignore_patterns("checkpoints"))
    report = compare(tmp_path, str(grid))
    assert report["groups"][0]["group"] == "sweep" and report["groups"][0]["runs"] == ["lr1e-3", "lr2e-3"]
    assert report["differing_keys"] == ["optimizer.lr"]
    report = compare(tmp_path, *map(str, lr_runs), str(array_folder), "--filter", "optimizer.lr=1e-3")
    assert [row["name"] for row in report["runs"]] == ["lr1e-3"]
    report = compare(tmp_path, *map(str, lr_runs), str(array_folder), "--filter", "group=lmol-kfold5")
    assert len(report["runs"]) == 5 and "optimizer.lr" not in report["differing_keys"]


@pytest.mark.slow
def test_a_run_still_training_is_read_as_it_is(lr_runs, tmp_path):
    source, running = lr_runs[0], tmp_path / "running"
    running.mkdir()
    shutil.copy(source / "config.resolved.json", running)
    lines = (source / "metrics.jsonl").read_text().splitlines(keepends=True)
    (running / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][:25])  # two lines and one being written
    (run,) = read_arguments([str(running)])
    assert run.state == "unfinished" and run.steps == 2 and sorted(run.series["train/loss"]) == [1, 2]
    assert compare(tmp_path, str(running), str(source))["differing_keys"] == []


@pytest.mark.slow
def test_errors_name_the_path_or_the_key(lr_runs, tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "absent"): f"{tmp_path / 'absent'}: does not exist",
        str(tmp_path / "empty"): f"{tmp_path / 'empty'}: not a run folder (no config.resolved.json or metrics.jsonl)",
        str(tmp_path / "nothing*"): f"{tmp_path / 'nothing*'}: no path matches",
    }
    for argument, message in cases.items():
        assert main([str(lr_runs[0]), argument, *out]) == 2
        assert message in capsys.readouterr().err
    assert main([*map(str, lr_runs), "--filter", "optimizer.lrr=1", *out]) == 2
    error = capsys.readouterr().err
    assert f"--filter optimizer.lrr: no run read from {lr_runs[0]}, {lr_runs[1]} has this key" in error
    assert "did you mean optimizer.lr" in error
    assert main([*map(str, lr_runs), "--filter", "optimizer.lr", *out]) == 2
    assert "--filter optimizer.lr: not KEY=VALUE" in capsys.readouterr().err
    assert main([*map(str, lr_runs), "--group-by", "nope", *out]) == 2
    assert "--group-by nope: no run read from" in capsys.readouterr().err


# --- parts 2 and 3: W&B files, one run per job across a requeue ------------------------------------------------


@pytest.mark.slow
def test_a_requeued_job_killed_after_step_2_keeps_one_wandb_run(tiny_llava, color_shards, tmp_path, capsys):
    run_dir = tmp_path / "job"
    common = ("tracking.wandb=offline", "checkpoint.every_steps=2", "train.max_steps=4")
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4241", "SLURM_ARRAY_TASK_ID": "1"}
    train(tiny_llava, color_shards, run_dir, *common, launcher="python", env=slurm, faults="exit_step=2")
    train(tiny_llava, color_shards, run_dir, *common, "--resume", "auto", env={**slurm, "SLURM_RESTART_COUNT": "1"})
    run_id = RunFolder(run_dir).wandb_id.read_text().strip()
    sessions = wandb_runs_in(run_dir / "wandb")
    assert len(sessions) == 2 and all((s / f"run-{run_id}.wandb").exists() for s in sessions)
    (run,) = read_wandb_runs(sessions)
    assert run.run_id == run_id and run.state == "finished" and run.source.count("offline-run-") == 2
    logged = {line["step"]: line["train/loss"] for line in read_metrics(run_dir) if "train/loss" in line}
    assert sorted(run.series["train/loss"]) == [1, 2, 3, 4]  # W&B lost the killed start's steps; the resume logs them
    assert run.series["train/loss"] == pytest.approx(logged)
    assert run.config["optimizer.lr"] == 2e-3 and run.config["job.world_size"] == 1 and run.config["job.nodes"] == 1
    assert run.config["job.slurm.job_id"] == "4242" and run.config["job.slurm.restart_count"] == "1"
    assert run.group == "slurm-array-4241"
    walls = {line["step"]: line[WALL_TIME] for line in read_metrics(run_dir) if "train/loss" in line}
    assert walls[3] > walls[2] > walls[1] > 0  # the resumed clock continues from the killed start's
    report = compare(tmp_path, str(run_dir / "wandb"), str(run_dir))
    assert {row["name"] for row in report["runs"]} == {"job", f"job ({run_id})"}
    assert all(row["steps"] == 4 and row["samples"] == 8 for row in report["runs"])
    report = compare(tmp_path, str(run_dir / "wandb"), str(run_dir), "--filter", "group=slurm-array-4241")
    assert [row["run_id"] for row in report["runs"]] == [run_id]  # the run folder has no tracking.group
    assert main([str(run_dir / "wandb"), "--filter", "job.slurm.jobid=4242", "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert f"--filter job.slurm.jobid: no run read from {run_dir / 'wandb'} has this key" in error
    assert "did you mean job.slurm.job_id" in error


@pytest.mark.slow
def test_the_comparison_is_logged_to_wandb_as_a_table(lr_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    report = compare(tmp_path, *map(str, lr_runs), "--log-wandb", "shardtune-compare-test")
    (table_file,) = (tmp_path / "compare/wandb").glob("offline-run-*/files/media/table/compare_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:4] == ["name", "group", "state", "optimizer.lr"]
    assert [row[0] for row in table["data"]] == ["lr1e-3", "lr2e-3"]
    images = list((tmp_path / "compare/wandb").glob("offline-run-*/files/media/images/curves_by_*.png"))
    assert len(images) == 2
    (logged,) = read_wandb_runs(wandb_runs_in(tmp_path / "compare/wandb"))
    assert logged.config["differing_keys"] == ["optimizer.lr"] and report["runs"][0]["name"] == "lr1e-3"


def test_only_run_fields_go_to_the_wandb_server_and_compare_needs_no_torch():
    assert server_filters([("group", "lmol-kfold5"), ("name", "fold0"), ("optimizer.lr", "1e-4")]) == {
        "group": "lmol-kfold5",
        "displayName": "fold0",
    }
    code = "import sys, trainer.compare.cli; print(sorted({'torch', 'wandb', 'matplotlib'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert loaded.stdout.strip() == "[]"  # the login node's command: heavy imports only where they are used


def test_one_tracker_per_job_with_its_nodes_and_slurm_ids(tmp_path):
    env = {"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    context = job_context(env)
    assert context["world_size"] == 16 and context["nodes"] == 2
    assert context["slurm"] == {"job_id": "7", "nodelist": "gpu[01-02]"}
    assert job_context({"SLURM_GPUS_ON_NODE": "4", "SLURM_NNODES": "3"})["gpus_per_node"] == 4
    assert default_group(TrackingSection(group="sweep")) == "sweep"
    tracker = make_tracker(False, RunFolder(tmp_path), TrackingSection(wandb="offline"), {}, total_steps=1)
    tracker.log({"train/loss": 1.0}, 1)
    tracker.close()
    assert not list(tmp_path.iterdir())  # a rank other than 0 starts no W&B run and writes nothing
