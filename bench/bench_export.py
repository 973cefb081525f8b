"""Peak resident memory of an export (issue 4): merge or consolidate + save, against the merged weights' size.

A random-weight LLaVA far larger than the tiny kit's (text model hidden 2048, 24 layers: ~1.2 B
parameters, 2.3 GB in bf16), saved twice, as a bf16 and as an fp32 base, with one random LoRA adapter
(r=16 on q/k/v/o), exported to bf16 from each (`export.lora_merged`: the base read into bf16 one tensor
at a time, each targeted weight read again in fp32 for its merge). Each export runs
`launch/merge_lora.py --verify-samples 0` in its own process and reads `peak_rss_bytes` (VmHWM reset
after the imports, so the merge and save phase alone) from merge_summary.json.

And the consolidation of a full fine-tune, from checkpoints of real 2-rank ZeRO-2 and ZeRO-3 runs of
`launch/train.py` (one step, `lora.enabled=false`) on a random LLaVA with 8 of those 24 layers (~0.4 B
parameters, 1.6 GB in fp32), exported with `--dtype float32`: DeepSpeed's fp32 master weights, read by
`trainer.export.zero_reader` one tensor at a time.

Goal: peak ≤ 1.3× the merged model's size. Both ratios are printed, with and without the process's
resident memory before loading (interpreter, torch, transformers).

    .venv/bin/python bench/bench_export.py --out runs/bench/export --json runs/bench/export/result.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script without installing

from data_shards.build import BuildConfig, build  # noqa: E402
from data_shards.synthetic import make_dataset  # noqa: E402
from trainer.distributed.launchers import deepspeed_command  # noqa: E402
from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model  # noqa: E402

GOAL = 1.3
TEXT = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=128,
)
FULL_LAYERS = 8  # training the model in full under ZeRO-2 on 2 CPU ranks fits in 24 GiB
ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


def build_bases(out: Path) -> dict[str, Path]:
    """The same random weights (the tiny kit's LLaVA with the TEXT language model) saved in fp32 and in bf16."""
    from transformers import AutoModelForImageTextToText

    from trainer.models.processor import load_processor

    fp32 = build_tiny_model("llava", out / "base-float32", image_size=SMALL_IMAGE, text=TEXT, overwrite=True)
    bf16 = out / "base-bfloat16"
    shutil.rmtree(bf16, ignore_errors=True)
    AutoModelForImageTextToText.from_pretrained(fp32, dtype=torch.bfloat16).save_pretrained(bf16)
    load_processor(str(fp32)).save_pretrained(bf16)
    return {"bfloat16": bf16, "float32": fp32}


def full_finetune(out: Path, base: Path, stage: int) -> Path:
    """A one-step full fine-tuning run of launch/train.py on 2 CPU ranks under ZeRO-`stage`; returns its folder."""
    data = out / "full-data"
    if not (data / "shards" / "train").exists():
        dataset = make_dataset("llava", data / "raw", n=16, seed=0, task="color")
        build(BuildConfig(input=dataset.input, out=data / "shards", seed=0, workers=1, overwrite=True, progress=False))
    run = out / f"full-zero{stage}"
    shutil.rmtree(run, ignore_errors=True)
    arguments = [
        "--config",
        str(ROOT / "configs/demo.yaml"),
        f"model.path={base}",
        f"data.train={data / 'shards' / 'train'}",
        "data.val=",
        f"train.output_dir={run}",
        "train.max_steps=1",
        "train.micro_batch_size=1",
        "lora.enabled=false",
        "eval.at_start=false",
        "checkpoint.resume=none",
        f"deepspeed.config={ROOT / 'configs/deepspeed'}/zero{stage}.json",
    ]
    command = deepspeed_command(2, ROOT / "launch/train.py", arguments)
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}")
    return run


def build_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    lora = LoraConfig(r=16, lora_alpha=32, target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16), lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    model.save_pretrained(out)
    return out


def export(checkpoint: Path, base: Path, out: Path, dtype: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        str(ROOT / "launch/merge_lora.py"),
        "--checkpoint",
        str(checkpoint),
        "--base",
        str(base),
        "--out",
        str(out),
        "--dtype",
        dtype,
        "--verify-samples",
        "0",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "merge_summary.json").read_text())
    return {
        key: summary[key]
        for key in (
            "merged_bytes",
            "rss_before_bytes",
            "peak_rss_bytes",
            "peak_rss_ratio",
            "peak_rss_delta_ratio",
            "peak_rss_scope",
            "merge_seconds",
        )
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/export")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["lora", "full"], help="run one of the two parts")
    parser.add_argument("--full-layers", type=int, default=FULL_LAYERS, help="layers of the fully fine-tuned model")
    parser.add_argument("--full-stages", type=int, nargs="+", default=[2, 3], choices=[2, 3], help="ZeRO stages")
    args = parser.parse_args(argv)
    result = {}
    if args.only in (None, "lora"):
        bases = build_bases(args.out)
        adapter = build_adapter(bases["bfloat16"], args.out / "adapter")
        for dtype, base in bases.items():
            result[f"LoRA, {dtype} base → bfloat16"] = export(
                adapter, base, args.out / f"merged-from-{dtype}", "bfloat16"
            )
    if args.only in (None, "full"):
        base = build_tiny_model(
            "llava",
            args.out / "full-base",
            image_size=SMALL_IMAGE,
            overwrite=True,
            text={**TEXT, "num_hidden_layers": args.full_layers},
        )
        for stage in args.full_stages:
            run = full_finetune(args.out, base, stage)
            result[f"full, ZeRO-{stage} → float32"] = export(run, base, args.out / f"full-{stage}", "float32")
    for name, figures in result.items():
        print(
            f"{name}: merged {figures['merged_bytes'] / 2**30:.2f} GiB, peak RSS "
            f"{figures['peak_rss_bytes'] / 2**30:.2f} GiB = {figures['peak_rss_ratio']:.2f}× "
            f"({figures['peak_rss_delta_ratio']:.2f}× above the {figures['rss_before_bytes'] / 2**20:.0f} MiB "
            f"before loading), {figures['merge_seconds']:.0f} s; goal ≤ {GOAL}×: "
            f"{'met' if figures['peak_rss_ratio'] <= GOAL else 'MISSED'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
