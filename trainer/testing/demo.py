"""`make demo`: synthetic shapes → shards → LoRA on a tiny LLaVA under ZeRO-2 on 2 CPU ranks → accuracy.

Writes `runs/demo/summary.json` with the held-out exact-match accuracy before and after training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from data_shards.build import BuildConfig, build
from data_shards.split import SplitSpec
from data_shards.synthetic import make_dataset
from data_shards.write import ShardLayout
from trainer.distributed.launchers import deepspeed_command
from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="launch/demo.py", description=__doc__)
    root.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder")
    root.add_argument("--samples", type=int, default=2400, help="synthetic samples (90%% train, 10%% held out)")
    root.add_argument("--ranks", type=int, default=2, help="training processes (CPU ranks)")
    root.add_argument("--config", type=Path, default=ROOT / "configs/demo.yaml", help="training recipe")
    root.add_argument("overrides", nargs="*", help="extra section.key=value training overrides")
    return root


def prepare_data(out: Path, samples: int) -> Path:
    dataset = make_dataset("llava", out / "raw", n=samples, seed=0, task="color")
    shards = out / "shards"
    build(
        BuildConfig(
            input=dataset.input,
            out=shards,
            image_root=dataset.image_root,
            split=SplitSpec.parse("train=0.9,val=0.1"),
            seed=0,
            layout=ShardLayout(max_samples=200),
            workers=2,
            overwrite=True,
            progress=False,
        )
    )
    return shards


def train(out: Path, base: Path, shards: Path, ranks: int, config: Path, overrides: list[str]) -> dict:
    arguments = [
        "--config",
        str(config),
        f"model.path={base}",
        f"data.train={shards / 'train'}",
        f"data.val={shards / 'val'}",
        f"train.output_dir={out / 'train'}",
        "checkpoint.resume=none",
        *overrides,
    ]
    command = deepspeed_command(ranks, ROOT / "launch/train.py", arguments)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    return json.loads((out / "train" / "train_summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = build_tiny_model("llava", out / "base_model", image_size=SMALL_IMAGE)
    shards = prepare_data(out, args.samples)
    result = train(out, base, shards, args.ranks, args.config, args.overrides)
    summary = {
        **result,
        "shards": str(shards),
        "base_model": str(base),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(
        f"demo: exact-match accuracy {summary['accuracy_before']:.2%} → {summary['accuracy_after']:.2%} "
        f"after {summary['steps']} steps on {summary['world_size']} ranks (ZeRO-{summary['zero_stage']}), "
        f"{summary['wall_time_s']} s; summary: {out / 'summary.json'}"
    )
    return 0
