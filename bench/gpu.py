"""The GPU benchmark (issue 17): shardtune on real model shapes on one GPU: tokens/s, MFU, peak memory beside the
planner's estimate, and HF Trainer + DeepSpeed on the same configuration as a ratio. No network.

Models: random weights at the published sizes of LLaVA-1.5-7B, Qwen2.5-VL-7B and Qwen2-VL-2B
(`trainer.testing.full_size`: their real widths, depths and vocabularies, the tiny kit's tokenizer and processor
at the published image settings), drawn on the GPU in bf16 and saved once under `--out`. Data: single-image
description samples, 640×640 photos-like pictures (resized by each processor as the real checkpoint's would), answers
of 20 to 120 words. Every case trains `--steps` optimizer steps on one GPU (one process, `python launch/train.py`;
the HF baseline under the deepspeed launcher, which HF's DeepSpeed integration needs); figures are over the steps
after `--warmup`.

- tokens/s: non-pad tokens per second (the trainer's `perf/tokens_per_s`);
- MFU: model FLOPs per second over the GPU's dense bf16 peak. Model FLOPs count the language model's matmuls
  (2 per parameter and token) and causal attention (2 × layers × tokens² × hidden per sample) forward, times 3
  for full fine-tuning and 2 for LoRA/QLoRA (no weight gradients of the frozen base); the head at supervised
  positions only, as the trainer computes it; the vision tower forward once (frozen: no backward);
  recomputation under gradient checkpointing is not counted (MFU, not HFU);
- peak memory: `memory/max_allocated_gib` of the run, beside `shardtune-plan`'s per-rank estimate;
- HF ratio: our tokens/s over `bench/hf_trainer_loop.py`'s (HF Trainer with the same ZeRO JSON and collator).

`--dry-run` runs every case on the CPU at the tiny kit's sizes (fp32, 2 steps, no MFU): the same code path, so the
script cannot rot unnoticed (tests/e2e/test_gpu_bench.py). On the GPU machine, first carry what its image lacks
(`bash bench/gpu_wheels.sh` here, then see its header).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script without installing

from data_shards.build import BuildConfig, build  # noqa: E402
from data_shards.synthetic import make_loose_benchmark_set  # noqa: E402
from trainer.config.schema import load  # noqa: E402
from trainer.distributed.launchers import deepspeed_command  # noqa: E402
from trainer.models.processor import load_processor  # noqa: E402
from trainer.plan import tokens as token_lengths  # noqa: E402
from trainer.plan.estimate import GIB, plan  # noqa: E402
from trainer.plan.model_shape import meta_model  # noqa: E402
from trainer.testing.full_size import FAMILIES, kit_overrides  # noqa: E402
from trainer.testing.tiny import GENERIC_ENGLISH, SMALL_IMAGE, build_tiny_model  # noqa: E402

RECIPE = ROOT / "configs/demo.yaml"
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU (vendor data sheets)
LORA = ("lora.enabled=true", "lora.r=16", "lora.alpha=32")
CHECKPOINTING = ("model.gradient_checkpointing=true",)
ENV = {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


@dataclass(frozen=True)
class Case:
    name: str
    record: str
    overrides: tuple[str, ...]
    hf_baseline: bool = False
    needs: str = ""  # a module the case needs (skipped, with the reason, without it)


CASES = (
    Case("llava7b-lora-zero2", "llava-1.5-7b-hf", (*LORA, *CHECKPOINTING, "deepspeed.zero_stage=2"), True),
    Case("llava7b-lora-zero2-packing", "llava-1.5-7b-hf", (*LORA, *CHECKPOINTING, "data.packing=true")),
    Case("llava7b-lora-zero2-no-checkpointing", "llava-1.5-7b-hf", (*LORA, "deepspeed.zero_stage=2")),
    Case("llava7b-qlora-zero2", "llava-1.5-7b-hf", (*LORA, *CHECKPOINTING, "quant.load_in_4bit=true")),
    Case("llava7b-lora-zero3", "llava-1.5-7b-hf", (*LORA, *CHECKPOINTING, "deepspeed.zero_stage=3")),
    Case("qwen25vl7b-lora-zero2-packing", "qwen2.5-vl-7b-instruct", (*LORA, *CHECKPOINTING, "data.packing=true")),
    Case("qwen2vl2b-lora-zero2", "qwen2-vl-2b-instruct", (*LORA, "deepspeed.zero_stage=2"), True),
    Case(
        "qwen2vl2b-lora-zero2-flash-attn",
        "qwen2-vl-2b-instruct",
        (*LORA, "deepspeed.zero_stage=2", "model.attention=flash_attention_2"),
        needs="flash_attn",
    ),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dry-run", action="store_true", help="every case on the CPU at tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu"), help="models, shards, runs")
    parser.add_argument("--only", nargs="*", choices=[case.name for case in CASES], help="run these cases only")
    parser.add_argument("--steps", type=int, help="optimizer steps per case (default 12; dry run 2)")
    parser.add_argument("--warmup", type=int, help="first steps left out of the figures (default 4; dry run 0)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no case after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 12)
    args.warmup = (0 if args.dry_run else 4) if args.warmup is None else args.warmup
    args.out = args.out.resolve()
    return args


def sizing(dry_run: bool) -> list[str]:
    """What differs between the dry run and the real one: dtype, batch, lengths, loader workers."""
    if dry_run:
        return ["model.dtype=float32", "train.precision=fp32", "train.micro_batch_size=2", "model.max_length=512"]
    return [
        "model.dtype=bfloat16",
        "train.precision=bf16",
        "train.micro_batch_size=8",
        "model.max_length=4096",
        "data.num_workers=6",
    ]


def build_model(record: str, out: Path, dry_run: bool) -> Path:
    family = FAMILIES[record]
    if dry_run:
        return build_tiny_model(family, out / f"tiny-{family}", image_size=SMALL_IMAGE)
    full = kit_overrides(record)
    return build_tiny_model(
        family, out / record, text=full["text"], vision=full["vision"], dtype="bfloat16", device="cuda"
    )


def build_data(out: Path, samples: int, image_size: int) -> Path:
    """Description samples, one picture each, answers of 20 to 120 words from the tokenizer's corpus."""
    split = out / "shards" / "train"
    if split.exists():
        return split
    shutil.rmtree(out / "shards", ignore_errors=True)
    make_loose_benchmark_set(out / "raw", samples, image_size=image_size, seed=0)
    words = " ".join(GENERIC_ENGLISH).split()
    rng = np.random.default_rng(0)
    records = []
    for index in range(samples):
        count, start = int(rng.integers(20, 121)), int(rng.integers(len(words)))
        answer = " ".join(words[(start + i) % len(words)] for i in range(count))
        turns = [{"from": "human", "value": "<image>\nDescribe this image."}, {"from": "gpt", "value": answer}]
        records.append({"id": f"g{index:06d}", "image": f"images/s{index:06d}.jpg", "conversations": turns})
    data_json = out / "raw" / "describe.json"
    data_json.write_text(json.dumps(records))
    build(BuildConfig(input=data_json, out=out / "shards", workers=2, progress=False, overwrite=True))
    return split


def case_overrides(case: Case, model: Path, split: Path, run: Path, args: argparse.Namespace) -> list[str]:
    return [
        f"model.path={model}",
        f"data.train={split}",
        "data.val=",
        f"train.output_dir={run}",
        f"train.max_steps={args.steps}",
        "train.log_every=1",
        "train.grad_accum=1",
        "checkpoint.every_steps=0",
        "checkpoint.resume=none",
        "eval.at_start=false",
        "tracking.wandb=disabled",
        *sizing(args.dry_run),
        *case.overrides,
    ]


def launch(command: list[str], log: Path) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as handle:
        code = subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, stdout=handle, stderr=subprocess.STDOUT)
    if code.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{command[:3]} failed (exit {code.returncode}); log {log}:\n{tail}")
    return time.monotonic() - started


def our_figures(run: Path, warmup: int) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [line for line in lines if "perf/tokens_per_s" in line][warmup:]
    seconds = sum(line["perf/step_time_s"] for line in timed)
    memory = [line.get("memory/max_allocated_gib", line.get("memory/max_rss_gib", 0.0)) for line in lines]
    return {
        "tokens_per_s": sum(line["perf/tokens_per_s"] * line["perf/step_time_s"] for line in timed) / seconds,
        "step_s": statistics.median(line["perf/step_time_s"] for line in timed),
        "nonpad_fraction": statistics.fmean(line["perf/nonpad_fraction"] for line in timed),
        "peak_gib": max(memory),
    }


def hf_tokens_per_s(case: Case, model: Path, split: Path, run: Path, args: argparse.Namespace) -> float:
    out = run / "hf.json"
    arguments = ["--steps", str(args.steps), "--out", str(out), "--config", str(RECIPE)]
    arguments += case_overrides(case, model, split, run, args)
    launch(deepspeed_command(1, ROOT / "bench/hf_trainer_loop.py", arguments), run / "hf.log")
    result = json.loads(out.read_text())
    ends = [result["begin"], *result["step_ends"]][args.warmup :]
    return sum(result["tokens"][args.warmup :]) / (ends[-1] - ends[0])


def model_flops_per_sample(config, tokens: token_lengths.TokenLengths) -> float:
    """Training FLOPs of one sample of the measured mean length (see the module's docstring)."""
    model, parts = meta_model(config)
    text = model.config.get_text_config()
    language, vision, head = 0, 0, 0
    for name, parameter in model.named_parameters():
        part = parts.part_of(name)
        if "lm_head" in name:
            head += parameter.numel()
        elif part == "vision":
            vision += parameter.numel()
        elif "embed_tokens" not in name:
            language += parameter.numel()
    merge = getattr(model.config.vision_config, "spatial_merge_size", 1) or 1
    patches = tokens.image_tokens_max * merge**2
    supervised = tokens.supervised_fraction * tokens.mean
    backward = 2 if config.lora.enabled else 3
    lm = 2 * language * tokens.mean + 2 * text.num_hidden_layers * tokens.mean**2 * text.hidden_size
    return backward * (lm + 2 * head * supervised) + 2 * vision * patches


def gpu_peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def run_case(case: Case, args: argparse.Namespace, split: Path) -> dict:
    if case.needs and importlib.util.find_spec(case.needs) is None:
        return {"skipped": f"{case.needs} is not importable"}
    if args.dry_run and "flash_attention_2" in " ".join(case.overrides):
        return {"skipped": "flash-attn needs CUDA"}
    model = build_model(case.record, args.out / "models", args.dry_run)
    run = args.out / "runs" / case.name
    shutil.rmtree(run, ignore_errors=True)
    arguments = case_overrides(case, model, split, run, args)
    # one GPU, one process: no launcher (launch/train.py sets up a world of one itself)
    train = [sys.executable, str(ROOT / "launch/train.py"), "--config", str(RECIPE), *arguments]
    wall = launch(train, run / "train.log")
    figures = {"wall_s": wall, **our_figures(run, args.warmup)}
    config = load(RECIPE, arguments)
    lengths = token_lengths.measure(config, meta_model(config)[0], load_processor(str(model)), 128)
    device = "cpu" if args.dry_run else "cuda"
    figures["planned_gib"] = plan(config, 1, lengths, device).per_rank(config.model.gradient_checkpointing) / GIB
    samples_per_s = figures["tokens_per_s"] / lengths.mean
    figures["model_tflop_per_s"] = samples_per_s * model_flops_per_sample(config, lengths) / 1e12
    peak = gpu_peak_flops()
    figures["mfu"] = figures["model_tflop_per_s"] * 1e12 / peak if peak else None
    if case.hf_baseline:
        figures["hf_tokens_per_s"] = hf_tokens_per_s(case, model, split, run, args)
        figures["ours_over_hf"] = figures["tokens_per_s"] / figures["hf_tokens_per_s"]
    return figures


def print_table(rows: dict[str, dict]) -> None:
    print("| case | tokens/s | step, s | model TFLOP/s | MFU | peak GiB | planned GiB | ours / HF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        if "skipped" in row:
            print(f"| {name} | skipped: {row['skipped']} | | | | | | |")
            continue
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "–"
        ratio = f"{row['ours_over_hf']:.2f}" if "ours_over_hf" in row else ""
        print(
            f"| {name} | {row['tokens_per_s']:.0f} | {row['step_s']:.2f} | {row['model_tflop_per_s']:.3g} | {mfu} | "
            f"{row['peak_gib']:.1f} | "
            f"{row['planned_gib']:.1f} | {ratio} |"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    split = build_data(args.out, 64 if args.dry_run else 512, 64 if args.dry_run else 640)
    rows: dict[str, dict] = {}
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        if time.monotonic() - started > args.budget_s:
            rows[case.name] = {"skipped": f"over the {args.budget_s:.0f} s budget"}
            continue
        rows[case.name] = run_case(case, args, split)
        print(f"{case.name}: {json.dumps(rows[case.name])}", flush=True)
    print_table(rows)
    result = {"dry_run": args.dry_run, "steps": args.steps, "warmup": args.warmup, "cases": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
