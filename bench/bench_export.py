"""Peak resident memory of a LoRA export (issue 4): merge + save, against the size of the merged weights.

A random-weight LLaVA far larger than the tiny kit's (text model hidden 2048, 12 layers: ~0.6 B
parameters, 1.2 GB in bf16), saved twice, as a bf16 and as an fp32 base, with one random LoRA adapter
(r=16 on q/k/v/o). Each export runs `launch/merge_lora.py --dtype bfloat16 --verify-samples 0` in its own
process and reads `peak_rss_bytes` (VmHWM reset after the imports, so the merge and save phase alone)
from merge_summary.json:

- bf16 base → bf16: the base is held in bf16 while peft adds each fp32 delta (`export.merge_dtype`);
- fp32 base → bf16: the base must be held in fp32 for the merge, then cast.

Goal: peak ≤ 1.3× the merged model's size. Both ratios are printed, with and without the process's
resident memory before loading (interpreter, torch, transformers).

    .venv/bin/python bench/bench_export.py --out runs/bench/export --json runs/bench/export/result.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script without installing

from trainer.tiny import build_tiny_model  # noqa: E402

GOAL = 1.3
TEXT = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=12, num_attention_heads=16,
            num_key_value_heads=16, head_dim=128)


def build_bases(out: Path) -> dict[str, Path]:
    """The same random weights saved in bf16 and in fp32, with the tiny kit's tokenizer and processor."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    tiny = build_tiny_model("llava", out / "tiny", overwrite=True)
    config = AutoConfig.from_pretrained(tiny)
    for key, value in TEXT.items():
        setattr(config.text_config, key, value)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    bases = {}
    for dtype in ("bfloat16", "float32"):
        bases[dtype] = out / f"base-{dtype}"
        model.to(getattr(torch, dtype)).save_pretrained(bases[dtype])
        for extra in tiny.iterdir():
            if not (bases[dtype] / extra.name).exists() and not extra.name.endswith(".safetensors"):
                shutil.copy(extra, bases[dtype] / extra.name)
    return bases


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


def export(adapter: Path, base: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, str(ROOT / "launch/merge_lora.py"), "--checkpoint", str(adapter), "--base", str(base),
               "--out", str(out), "--dtype", "bfloat16", "--verify-samples", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "merge_summary.json").read_text())
    return {key: summary[key] for key in ("merged_bytes", "rss_before_bytes", "peak_rss_bytes", "peak_rss_ratio",
                                          "peak_rss_delta_ratio", "peak_rss_scope", "merge_seconds")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/export")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    bases = build_bases(args.out)
    adapter = build_adapter(bases["bfloat16"], args.out / "adapter")
    result = {f"{dtype} base": export(adapter, base, args.out / f"merged-from-{dtype}") for dtype, base in bases.items()}
    for name, figures in result.items():
        print(f"{name} → bfloat16: merged {figures['merged_bytes'] / 2**30:.2f} GiB, peak RSS "
              f"{figures['peak_rss_bytes'] / 2**30:.2f} GiB = {figures['peak_rss_ratio']:.2f}× "
              f"({figures['peak_rss_delta_ratio']:.2f}× above the {figures['rss_before_bytes'] / 2**20:.0f} MiB "
              f"before loading), {figures['merge_seconds']:.0f} s; goal ≤ {GOAL}×: "
              f"{'met' if figures['peak_rss_ratio'] <= GOAL else 'MISSED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
