"""Logits only where the loss needs them (issue 17): peak memory and step time of one forward and backward with the
head at every position (the model's own loss) against the head at supervised positions only (shardtune's
`LanguageModelLoss`), at real vocabulary sizes and sequence lengths, on CPU.

Model: the tiny LLaVA kit with a 512-wide, 2-layer language model and the vocabulary of LLaVA-1.5 (32,064) or
Qwen2-VL (151,936); a text-only row of `--tokens` tokens of which the last `--supervised` fraction are labels (an
answer after a long prompt and image tokens; VLM SFT is mostly prompt). fp32, eager attention, micro batch 1.
Each mode runs in a fresh process: one warm-up step, then `--repeats` timed steps; the peak is the resident
set's high-water mark above the resident set before the timed steps (reset with /proc/self/clear_refs), with
`MALLOC_MMAP_THRESHOLD_=65536` so freed tensors leave the resident set. Both modes' losses are printed and must
agree (the same loss, as tests/unit/test_objectives.py checks with gradients).
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

MIB = 2**20
VOCABULARIES = {"llava-1.5 (32,064)": 32064, "qwen2-vl (151,936)": 151936}
ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/logits"), help="where the models are built")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--supervised", type=float, default=0.1, help="fraction of the row that is answer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MODEL"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(out: Path, vocab: int) -> Path:
    from trainer.testing.tiny import SMALL_IMAGE, build_tiny_model

    text = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 2, "num_attention_heads": 8}
    text |= {"num_key_value_heads": 8, "head_dim": 64, "vocab_size": vocab}
    return build_tiny_model("llava", out / f"vocab{vocab}", image_size=SMALL_IMAGE, text=text)


def child(mode: str, model_path: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    from trainer.testing.memory_probe import reset_peak, status_kib
    from trainer.train.objectives import LanguageModelLoss

    model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="eager").train()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, 1000, (1, args.tokens), generator=generator)
    labels = torch.full_like(input_ids, -100)
    answer = round(args.supervised * args.tokens)
    labels[:, -answer:] = input_ids[:, -answer:]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    objective = LanguageModelLoss()
    units = objective.units(inputs, None)

    def step() -> float:
        if mode == "all positions":
            loss = model(**inputs, use_cache=False).loss * units
        else:
            loss, _ = objective(model, inputs, None)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss) / units

    step()
    before = status_kib("VmRSS")
    reset_peak()
    started = time.perf_counter()
    losses = [step() for _ in range(args.repeats)]
    seconds = (time.perf_counter() - started) / args.repeats
    return {"peak_bytes": (status_kib("VmHWM") - before) * 1024, "step_s": seconds, "loss": losses[-1]}


def measure(mode: str, model: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(model), "--tokens", str(args.tokens)]
    command += ["--supervised", str(args.supervised), "--repeats", str(args.repeats)]
    result = subprocess.run(command, env={**os.environ, **ENV}, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{mode} on {model}: failed\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return {}
    rows = {}
    print("| vocabulary | head at | peak, MiB | step, s | loss |")
    print("|---|---|---:|---:|---:|")
    for name, vocab in VOCABULARIES.items():
        model = build(args.out.resolve(), vocab)
        for mode in ("all positions", "supervised positions"):
            rows[f"{name}, {mode}"] = row = measure(mode, model, args)
            print(f"| {name} | {mode} | {row['peak_bytes'] / MIB:.0f} | {row['step_s']:.2f} | {row['loss']:.4f} |")
        full, ours = rows[f"{name}, all positions"], rows[f"{name}, supervised positions"]
        peak, step = ours["peak_bytes"] / full["peak_bytes"], ours["step_s"] / full["step_s"]
        print(f"| {name} | ratio (supervised / all) | {peak:.2f} | {step:.2f} | |")
    result = {"tokens": args.tokens, "supervised_fraction": args.supervised, "repeats": args.repeats, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
