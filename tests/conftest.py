"""Shared fixtures: a tiny LLaVA and small colour-task shards, built once per test session."""

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from trainer.distributed.launchers import deepspeed_command, torchrun_command
from trainer.testing import faults as faults_module

ROOT = Path(__file__).resolve().parents[1]
# families whose published template cannot be split into prompt and answer (or that publish none), and ours
REPLACED_TEMPLATES = {
    "llava_onevision": ROOT / "configs/templates/llava-onevision.jinja",
    "paligemma": ROOT / "configs/templates/paligemma.jinja",
}


@pytest.fixture(autouse=True)
def private_shard_cache(request, tmp_path_factory, monkeypatch) -> None:
    """Each test its own node-local shard cache: a copy cached by one test never answers another's transfer."""
    name = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    monkeypatch.setenv("SHARDTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "shard-cache" / name))


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model

    return build_tiny_model("llava", tmp_path_factory.mktemp("models") / "tiny-llava", image_size=SMALL_IMAGE)


@pytest.fixture(scope="session")
def color_shards(tmp_path_factory) -> Path:
    from data_shards.build import BuildConfig, build
    from data_shards.split import SplitSpec
    from data_shards.synthetic import make_dataset
    from data_shards.write import ShardLayout

    root = tmp_path_factory.mktemp("color")
    dataset = make_dataset("llava", root / "raw", n=320, seed=0, task="color")
    build(
        BuildConfig(
            input=dataset.input,
            out=root / "shards",
            image_root=dataset.image_root,
            split=SplitSpec.parse("train=0.9,val=0.1"),
            layout=ShardLayout(max_samples=50),
            workers=0,
            progress=False,
        )
    )
    return root / "shards"


@pytest.fixture(scope="session")
def torch_extensions(tmp_path_factory) -> dict[str, str]:
    """A private folder for JIT-built DeepSpeed ops (DeepSpeedCPUAdam), shared by this session's tests: a build
    killed elsewhere leaves a lock in the shared cache that hangs the next build."""
    return {"TORCH_EXTENSIONS_DIR": str(tmp_path_factory.mktemp("torch_extensions"))}


TRAINING_VARIABLES = {
    "OMP_NUM_THREADS": "1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_SILENT": "true",
}


def training_env() -> dict[str, str]:
    return {**os.environ, **TRAINING_VARIABLES}


def with_faults(faults: str, overrides: list[str], env: dict | None) -> tuple[list[str], dict]:
    """`trainer.testing.faults` switched on for a run: e.g. "exit_step=11" (see that module)."""
    if not faults:
        return overrides, dict(env or {})
    return [*overrides, f"train.callbacks=[{faults_module.CALLBACK}]"], {
        **(env or {}),
        faults_module.ENVIRONMENT: faults,
    }


def launch_training(
    launcher: str,
    ranks: int,
    overrides: list[str],
    timeout: int = 300,
    recipe: Path = ROOT / "configs/demo.yaml",
    env: dict | None = None,
    faults: str = "",
) -> subprocess.CompletedProcess:
    """Run launch/train.py for real under the deepspeed launcher, torchrun, plain python, or (one rank) in-process."""
    overrides, env = with_faults(faults, overrides, env)
    if launcher == "in-process":
        return train_in_process(["--config", str(recipe), *overrides], env)
    script, arguments = ROOT / "launch/train.py", ["--config", str(recipe), *overrides]
    if launcher == "deepspeed":
        command = deepspeed_command(ranks, script, arguments)
    elif launcher == "torchrun":
        command = torchrun_command(ranks, script, arguments)
    else:
        command = [sys.executable, str(script), *arguments]
    return run_process_group(command, {**training_env(), **env}, timeout)


@contextmanager
def environment(variables: dict[str, str]):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def train_in_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """launch/train.py's `main` in this process, as one rank: no interpreter start-up, imports paid once. The
    entry point undoes its process group, signal handlers and launcher variables itself; logging is put back here."""
    from trainer.train.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with environment({**TRAINING_VARIABLES, **env}), redirect_stdout(stdout), redirect_stderr(stderr):
            code = main(argv)
    finally:
        root.handlers[:], root.level = handlers, level
    return subprocess.CompletedProcess(["launch/train.py", *argv], code, stdout.getvalue(), stderr.getvalue())


def run_process_group(
    command: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Like subprocess.run (in `cwd`, the repository by default), but a timeout kills the whole group: ranks, loader
    workers and compilers alike."""
    process = subprocess.Popen(
        command,
        cwd=ROOT if cwd is None else cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(command)} ran past {timeout} s\n{stdout[-3000:]}{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def shm_allreduce_segments() -> set[str]:
    return {path.name for path in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step → loss, the last logged value winning (a resumed run re-logs the steps after its checkpoint)."""
    return {m["step"]: m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m}


MIXED_COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
MIXED_TEXT = (
    ("Which color do you get by mixing blue and yellow?", "green"),
    ("Which color do you get by mixing red and white?", "pink"),
    ("How many shapes are there?", "three"),
)


def write_mixed_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """A LLaVA JSON where every other conversation is text-only (as in LLaVA's own 665k mix): colour questions
    on a flat-colour image and fixed text questions. Returns the JSON path; images lie under `root`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        if index % 2:
            question, answer = MIXED_TEXT[index // 2 % len(MIXED_TEXT)]
            records.append(
                {
                    "id": f"t{index:04d}",
                    "conversations": [  # numbered: not exact duplicates
                        {"from": "human", "value": f"Question {index}. {question}"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            )
            continue
        answer = list(MIXED_COLORS)[index // 2 % len(MIXED_COLORS)]
        pixels = np.clip(np.array(MIXED_COLORS[answer]) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / f"i{index:04d}.png")
        records.append(
            {
                "id": f"i{index:04d}",
                "image": f"images/i{index:04d}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat color is the shape?"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="session")
def mixed_shards(tmp_path_factory) -> Path:
    """Shards of `write_mixed_dataset`: half text-only, half one image, in shards of 8."""
    from data_shards.build import BuildConfig, build
    from data_shards.split import SplitSpec
    from data_shards.write import ShardLayout

    root = tmp_path_factory.mktemp("mixed")
    data = write_mixed_dataset(root / "raw", 192)
    build(
        BuildConfig(
            input=data,
            out=root / "shards",
            image_root=root / "raw",
            split=SplitSpec.parse("train=0.875,val=0.125"),
            layout=ShardLayout(max_samples=8),
            workers=0,
            progress=False,
        )
    )
    return root / "shards"


def synthetic_split(folder: Path, shards: int, per_shard: int, name: str) -> str:
    """An index of `shards × per_shard` samples without tars, as `pipe:` URLs (their index found beside them):
    for what the order costs at scale; no shard is opened."""
    from data_shards.index import save_index
    from data_shards.sample import SCHEMA_VERSION
    from data_shards.write import shard_name

    offsets = (np.arange(per_shard + 1) * 2048).tolist()
    entries = [
        {"name": shard_name(s), "samples": per_shard, "bytes": offsets[-1] + 1024, "sha256": f"{s:064x}"}
        | {"offsets": offsets, "keys": [f"{name}{s}-{i}" for i in range(per_shard)]}
        for s in range(shards)
    ]
    header = {"schema_version": SCHEMA_VERSION, "split": "train", "num_samples": shards * per_shard}
    folder.mkdir()
    save_index(folder, {**header, "source": {"fingerprint": name}, "shards": entries})
    return f"pipe:cat {folder}/shard-{{000000..{shards - 1:06d}}}.tar"
