"""The memory planner (`shardtune-plan`, issue 14) against measured peaks of real 2-rank CPU runs.

Each configuration trains for real under the deepspeed launcher (2 CPU ranks, gloo, fp32, the demo recipe's
LoRA/ZeRO settings with the overrides listed) with `trainer.testing.memory_probe:PeakMemory`, which records each
rank's peak resident set above its resident set before the model loads, by phase (setup; forward and backward;
optimizer step). glibc's `MALLOC_MMAP_THRESHOLD_=65536` makes every tensor-sized block its own mapping, so freed
memory leaves the resident set and the peak is that of live memory. The planner (device `cpu`) is run on the
same config and the same shards; the figure compared is the training peak (the largest phase after setup),
the larger of the two ranks'. Goal: within 15% for every configuration.

Models: the tiny LLaVA kit (64 wide) and the same with a wider language model (`--width`, 4 layers), so that
model states outweigh the runtime's own memory. Data: the demo's colour questions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script without installing

from data_shards.build import BuildConfig, build  # noqa: E402
from data_shards.synthetic import make_dataset  # noqa: E402
from trainer.config.schema import load  # noqa: E402
from trainer.distributed.launchers import deepspeed_command  # noqa: E402
from trainer.models.processor import load_processor  # noqa: E402
from trainer.plan import tokens  # noqa: E402
from trainer.plan.estimate import plan  # noqa: E402
from trainer.plan.model_shape import meta_model  # noqa: E402
from trainer.testing.memory_probe import CALLBACK  # noqa: E402
from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model  # noqa: E402

RECIPE = ROOT / "configs/demo.yaml"
RANKS = 2
GOAL = 0.15
MIB = 2**20
ENV = {
    "OMP_NUM_THREADS": "1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
    "MALLOC_MMAP_THRESHOLD_": "65536",
}
CONFIGS = {
    "zero0-lora": ("wide", ["deepspeed.zero_stage=0"]),
    "zero0-full": ("wide", ["deepspeed.zero_stage=0", "lora.enabled=false"]),
    "zero2-lora": ("wide", ["deepspeed.zero_stage=2"]),
    "zero2-full": ("wide", ["deepspeed.zero_stage=2", "lora.enabled=false"]),
    "zero3-lora": ("wide", ["deepspeed.zero_stage=3"]),
    "zero3-full": ("wide", ["deepspeed.zero_stage=3", "lora.enabled=false"]),
    "zero2-qlora": ("wide", ["deepspeed.zero_stage=2", "quant.load_in_4bit=true"]),
    "zero2-full-mb16": ("wide", ["deepspeed.zero_stage=2", "lora.enabled=false", "train.micro_batch_size=16"]),
    "zero0-lora-mb32": ("wide", ["deepspeed.zero_stage=0", "train.micro_batch_size=32"]),
    "zero0-lora-ckpt-mb32": (
        "wide",
        ["deepspeed.zero_stage=0", "train.micro_batch_size=32", "model.gradient_checkpointing=true"],
    ),
    "tiny-zero0-full": ("tiny", ["deepspeed.zero_stage=0", "lora.enabled=false"]),
    "tiny-zero2-lora": ("tiny", ["deepspeed.zero_stage=2"]),
    "tiny-zero3-full": ("tiny", ["deepspeed.zero_stage=3", "lora.enabled=false"]),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/memory"), help="models, shards and runs")
    parser.add_argument("--width", type=int, default=1024, help="the wider model's hidden size (multiple of 64)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run these configurations only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--replan", action="store_true", help="reuse the measured peaks already under --out; only plan again"
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    return args


def build_models(out: Path, width: int) -> dict[str, Path]:
    wide = {
        "hidden_size": width,
        "intermediate_size": 32 * round(width * 8 / 3 / 32),
        "num_hidden_layers": 4,
        "num_attention_heads": width // 64,
        "head_dim": 64,
    }
    return {
        "tiny": build_tiny_model("llava", out / "model-tiny", image_size=SMALL_IMAGE),
        "wide": build_tiny_model("llava", out / f"model-{width}", image_size=SMALL_IMAGE, text=wide),
    }


def build_shards(out: Path) -> Path:
    split = out / "shards" / "train"
    if not split.exists():
        dataset = make_dataset("llava", out / "raw", n=128, seed=0, task="color")
        build(BuildConfig(input=dataset.input, out=out / "shards", workers=0, progress=False, overwrite=True))
    return split


def overrides(model: Path, shards: Path, run: Path, steps: int, extra: list[str]) -> list[str]:
    return [
        f"model.path={model}",
        f"data.train={shards}",
        "data.val=",
        "data.num_workers=0",
        f"train.output_dir={run}",
        f"train.max_steps={steps}",
        "train.micro_batch_size=4",
        "tracking.wandb=disabled",
        "checkpoint.every_steps=0",
        "checkpoint.resume=none",
        "eval.at_start=false",
        f"train.callbacks=[{CALLBACK}]",
        *extra,
    ]


def train(run: Path, arguments: list[str]) -> float:
    command = deepspeed_command(RANKS, ROOT / "launch/train.py", ["--config", str(RECIPE), *arguments])
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{run.name}: training failed\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def measured(run: Path) -> dict:
    ranks = [json.loads(path.read_text()) for path in sorted((run / "memory").glob("rank*.json"))]
    peak = max(ranks, key=lambda figures: figures["train_peak_bytes"])
    phase = max(peak["phase_peak_bytes"], key=peak["phase_peak_bytes"].get)
    return {
        "train_peak_bytes": peak["train_peak_bytes"],
        "setup_peak_bytes": max(r["setup_peak_bytes"] for r in ranks),
        "peak_phase": phase,
    }


def planned(arguments: list[str]) -> dict:
    config = load(RECIPE, arguments)
    model_and_parts = meta_model(config)
    lengths = tokens.measure(config, model_and_parts[0], load_processor(config.model.path), 256)
    result = plan(config, RANKS, lengths, "cpu", model_and_parts=model_and_parts)
    return {
        "planned_bytes": result.per_rank(result.checkpointing),
        "terms_bytes": {
            **result.states["device"],
            "activations": result.micro_batch * result.activations_per_sample[result.checkpointing],
            **result.transients,
            "runtime": result.runtime,
        },
    }


def print_table(rows: dict[str, dict]) -> None:
    print("| configuration | measured peak, MiB | planned, MiB | error | peak phase | setup peak, MiB |")
    print("|---|---:|---:|---:|---|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['train_peak_bytes'] / MIB:.0f} | {row['planned_bytes'] / MIB:.0f} | "
            f"{row['error']:+.1%} | {row['peak_phase']} | {row['setup_peak_bytes'] / MIB:.0f} |"
        )
    worst = max(abs(row["error"]) for row in rows.values())
    print(f"\nlargest error {worst:.1%} (goal: within {GOAL:.0%})")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    models, shards = build_models(args.out, args.width), build_shards(args.out)
    rows = {}
    for name in args.only or CONFIGS:
        kind, extra = CONFIGS[name]
        run = args.out / "runs" / name
        arguments = overrides(models[kind], shards, run, args.steps, extra)
        wall_s = None if args.replan and (run / "memory").exists() else train(run, arguments)
        row = {**measured(run), "wall_s": wall_s, **planned(arguments)}
        row["error"] = row["planned_bytes"] / row["train_peak_bytes"] - 1
        rows[name] = row
        print(f"{name}: measured {row['train_peak_bytes'] / MIB:.0f} MiB, planned {row['planned_bytes'] / MIB:.0f} MiB")
    print_table(rows)
    result = {"width": args.width, "ranks": RANKS, "steps": args.steps, "configs": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
