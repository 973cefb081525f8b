"""Training step time and tokens/s: our trainer against a raw DeepSpeed loop and HF Trainer (issue 3).

Everything runs for real on 2 CPU ranks (`--ranks`) under the deepspeed launcher (gloo, fp32), with the demo recipe
(`configs/demo.yaml`: tiny LLaVA, LoRA r=16, ZeRO-2, micro batch 8, 1 DataLoader worker per rank),
no validation split, no checkpoint before the end and one metrics line per 10 steps (as in the demo).

1. Overhead of our loop. `launch/train.py` against `bench/raw_ds_loop.py`, a hand-written
   forward/backward/step loop over the same model, LoRA setup, parameter groups, optimizer and
   resolved DeepSpeed JSON, fed with the same micro-batches from the same `Collator`, all collated
   before its timed loop. Figure: the mean step time over the steps after the warm-up (their total time
   / their number: slow steps count as they cost), and raw/ours (goal >= 0.95: our loop costs at most
   ~5% more per step). Our step times are `perf/step_time_s` from metrics.jsonl, each line the mean of
   its 10 steps; a median of those would not compare with a median of the raw loop's single steps. A third run,
   the raw loop fed by the trainer's own loader (`--feed loader`), splits
   the difference into the data pipeline's share and the loop's own bookkeeping.
2. Tokens/s on variable-length data. LLaVA records whose captions have 3 to 150 words (log-uniform),
   so that padding to the longest sample of a batch wastes much of the batch:
   (a) HF `transformers.Trainer` with `TrainingArguments(deepspeed=<the same ZeRO-2 dict>)`, our
   `Collator` (packing off) as its data collator; (b) our trainer, padding; (c) our trainer, packing;
   `model.max_length` the longest sample for (a) and (b), and for (c) the shortest at which packed batches
   are >= 95% non-pad (longer rows waste less on padding, but cost more attention). Figure: non-pad tokens per
   second over the steps after the warm-up (startup excluded), and (c)/(a) (goal >= 1.5) and (b)/(a).

Ratios are always between runs of this one invocation, never against fixed numbers. Noise: the
machine is small and shared, and a neighbour's test suite can halve a run's speed. So each
configuration runs `--repeats` times, rounds interleaved; every run is started in a quiet moment (other
processes under 10% of the CPU for 2 s) and the CPU share other processes took during it is measured
(/proc/stat less our own processes' rusage); a disturbed run (over 10%) is run once more; waiting and
re-running stop after `--budget` seconds. The best run of each configuration is kept (as in
bench_stream.py) and every run is listed with its neighbours' share; the loop overhead is also given
as the ratio of the median runs, which one lucky or unlucky run moves less. Datasets, shards and the tiny
model are rebuilt under `--out` (a few seconds) and sized so that every run reads each training
sample once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script without installing

from data_shards.build import BuildConfig, build  # noqa: E402
from data_shards.stream import ShardStream, Skipped, StreamConfig  # noqa: E402
from data_shards.synthetic import make_dataset, make_loose_benchmark_set  # noqa: E402
from data_shards.write import ShardLayout  # noqa: E402
from trainer.batches.collate import Collator  # noqa: E402
from trainer.batches.packing import packed_rows  # noqa: E402
from trainer.config.schema import load  # noqa: E402
from trainer.distributed.launchers import deepspeed_command  # noqa: E402
from trainer.models.processor import load_processor  # noqa: E402
from trainer.testing.tiny import GENERIC_ENGLISH, SMALL_IMAGE, build_tiny_model  # noqa: E402

RECIPE = ROOT / "configs/demo.yaml"
BUILD_WORKERS = 2
SEED = 0
CAPTION_WORDS = (3, 150)
PROMPT = "<image>\nDescribe this image."
GOALS = {"raw/ours": 0.95, "packing/hf": 1.5}
NONPAD_GOAL = 0.95  # packed slots holding real tokens
QUIET_SHARE = 0.1  # a run during which other processes used more of the machine's CPU is "disturbed"
QUIET_WINDOW_S = 2.0
LOG_EVERY = 10  # our trainer's metrics lines (the demo recipe's value); each covers that many steps
ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run (one micro-batch each)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of every figure")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; the best is kept")
    parser.add_argument(
        "--budget",
        type=float,
        default=480,
        help="seconds after which runs no longer wait for a quiet machine nor repeat when disturbed",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train"), help="data, models and run folders")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", choices=["overhead", "throughput"], help="run one of the two parts")
    parser.add_argument(
        "--text-width",
        type=int,
        help="widen the tiny LLaVA's language model to this hidden size "
        "(intermediate 8/3 of it, heads of 64), where compute outweighs per-step fixed costs",
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=2,
        help="ranks (deepspeed --num_gpus); with 1, each rank's "
        "loader worker has a core of its own, as on GPU nodes with spare cores",
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        help="micro batch size for every loop (default: the recipe's); "
        "more tokens per step make per-step fixed costs matter less, as with real sequence lengths",
    )
    parser.add_argument("--text-layers", type=int, default=2, help="its layers, with --text-width")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps - 1:
        parser.error("--warmup must leave at least two timed steps")
    args.out = args.out.resolve()
    args.common = [f"train.micro_batch_size={args.micro_batch}"] if args.micro_batch else []
    args.deadline = time.monotonic() + args.budget
    return args


def wider_text(width: int | None, layers: int) -> dict | None:
    """`build_tiny_model` overrides for a wider language model; None for the tiny kit's own."""
    if width is None:
        return None
    if width % 64:
        raise SystemExit(f"--text-width {width}: must be a multiple of 64 (heads of 64)")
    return {
        "hidden_size": width,
        "intermediate_size": 32 * round(width * 8 / 3 / 32),
        "num_hidden_layers": layers,
        "num_attention_heads": width // 64,
        "head_dim": 64,
    }


# --- data: the demo's colour task, and captions of very different lengths -----------------------


def build_split(data_json: Path, out: Path) -> Path:
    """Shards of one `train` split (200 samples each); returns the split folder."""
    report = build(
        BuildConfig(
            input=data_json,
            out=out,
            seed=SEED,
            layout=ShardLayout(max_samples=200),
            workers=BUILD_WORKERS,
            overwrite=True,
            progress=False,
        )
    )
    if report["rejects_by_reason"]:
        raise RuntimeError(f"{data_json}: rejected records {report['rejects_by_reason']}")
    return out / "train"


def color_split(out: Path, n: int) -> Path:
    """The demo's data: single-image colour questions (synthetic shapes), n samples."""
    shutil.rmtree(out, ignore_errors=True)
    dataset = make_dataset("llava", out / "raw", n=n, seed=SEED, task="color")
    return build_split(dataset.input, out / "shards")


def caption(rng: np.random.Generator, words: list[str]) -> str:
    """A run of the tokenizer corpus' own words, its length log-uniform in CAPTION_WORDS."""
    low, high = CAPTION_WORDS
    count = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
    start = int(rng.integers(len(words)))
    return " ".join(words[(start + i) % len(words)] for i in range(count))


def varlen_split(out: Path, n: int) -> Path:
    """n LLaVA records, one synthetic 32x32 image each, asking for a description of 3 to 150 words."""
    shutil.rmtree(out, ignore_errors=True)
    make_loose_benchmark_set(out / "raw", n, image_size=32, seed=SEED)
    rng, words = np.random.default_rng(SEED), " ".join(GENERIC_ENGLISH).split()
    records = [
        {
            "id": f"v{index:06d}",
            "image": f"images/s{index:06d}.jpg",
            "conversations": [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": caption(rng, words)}],
        }
        for index in range(n)
    ]
    data_json = out / "raw" / "varlen.json"
    data_json.write_text(json.dumps(records, indent=1))
    return build_split(data_json, out / "shards")


def token_lengths(split: Path, model_path: Path) -> dict[str, int]:
    """Sample key -> tokens, as the trainer's Collator encodes it (image tokens included)."""
    processor = load_processor(str(model_path))
    collator = Collator(processor, 1 << 30, None)
    stream = ShardStream(split, config=StreamConfig(shuffle=False, decode=False), rank=0, world_size=1)
    return {sample.key: collator([sample]).num_tokens for sample in stream if not isinstance(sample, Skipped)}


def rank_batches(split: Path, micro: int, steps: int, ranks: int) -> list[list[str]]:
    """The sample keys of every micro-batch the trainer's ranks read in epoch 0, as its stream orders them."""
    batches = []
    for rank in range(ranks):
        config = StreamConfig(batch_size=micro, seed=SEED, shuffle=True, decode=False)
        keys = [
            s.key for s in ShardStream(split, config=config, rank=rank, world_size=ranks) if not isinstance(s, Skipped)
        ]
        batches += [keys[i : i + micro] for i in range(0, len(keys), micro)][:steps]
    return batches


def packed_nonpad_fraction(batch_lengths: list[list[int]], max_length: int) -> float:
    """Non-pad share of the slots when every micro-batch is packed by `packed_rows` at `max_length`."""
    slots = 0
    for lengths in batch_lengths:
        rows = packed_rows(lengths, max_length)
        slots += len(rows) * max(sum(lengths[i] for i in row) for row in rows)
    return sum(map(sum, batch_lengths)) / slots


def packing_plan(lengths: dict[str, int], batches: list[list[str]]) -> dict:
    """model.max_length for padding (the longest sample, rounded up to 32, so none is dropped) and for
    packing (the least multiple of 32 at which packed micro-batches are NONPAD_GOAL non-pad), rows used."""
    longest = max(lengths.values())
    batch_lengths = [[lengths[key] for key in batch] for batch in batches]
    padded = packed = 32 * math.ceil(longest / 32)
    while packed_nonpad_fraction(batch_lengths, packed) < NONPAD_GOAL:
        packed += 32
    rows = Counter(len(packed_rows(batch, packed)) for batch in batch_lengths)
    totals = [sum(batch) for batch in batch_lengths]
    return {
        "sample_tokens": {
            "min": min(lengths.values()),
            "median": statistics.median(lengths.values()),
            "mean": statistics.fmean(lengths.values()),
            "max": longest,
        },
        "batch_tokens": {"min": min(totals), "median": statistics.median(totals), "max": max(totals)},
        "max_length_padded": padded,
        "max_length_packed": packed,
        "rows_per_batch": {str(count): rows[count] for count in sorted(rows)},
    }


# --- runs -----------------------------------------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all processes, ours or not)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def our_cpu_seconds() -> float:
    """CPU seconds of this process and every descendant reaped so far (launcher, ranks, loader workers)."""
    usages = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def launch(script: Path, arguments: list[str], log: Path, ranks: int) -> dict:
    """`deepspeed --num_gpus <ranks> script ...` with its output in `log`. Returns its wall seconds and the share
    of the machine's CPU that other processes used meanwhile (the noise a neighbour adds to this run)."""
    command = deepspeed_command(ranks, script, arguments)
    log.parent.mkdir(parents=True, exist_ok=True)
    start, busy, ours = time.perf_counter(), busy_cpu_seconds(), our_cpu_seconds()
    with log.open("w") as handle:
        code = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **ENV}, stdout=handle, stderr=subprocess.STDOUT
        ).returncode
    wall = time.perf_counter() - start
    others = (busy_cpu_seconds() - busy) - (our_cpu_seconds() - ours)
    if code:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{script.name} failed (exit {code}); log {log}:\n{tail}")
    return {"wall_s": wall, "neighbour_cpu_share": max(0.0, others) / (wall * (os.cpu_count() or 1))}


def recipe_overrides(model: Path, split: Path, steps: int, run_dir: Path, extra: list[str]) -> list[str]:
    return [
        "--config",
        str(RECIPE),
        f"model.path={model}",
        f"data.train={split}",
        "data.val=",
        f"train.output_dir={run_dir}",
        f"train.max_steps={steps}",
        f"train.log_every={LOG_EVERY}",
        "checkpoint.every_steps=0",
        "checkpoint.resume=none",
        "eval.at_start=false",
        *extra,
    ]


def run_ours(model: Path, split: Path, steps: int, run_dir: Path, extra: list[str], ranks: int) -> dict:
    """launch/train.py, per step: each metrics.jsonl line's perf/* are means over the steps since the
    previous line, so every step of an interval gets its line's step time, tokens and non-pad fraction."""
    shutil.rmtree(run_dir, ignore_errors=True)
    timing = launch(
        ROOT / "launch/train.py",
        recipe_overrides(model, split, steps, run_dir, extra),
        run_dir.with_suffix(".log"),
        ranks,
    )
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "perf/step_time_s" in line]
    spans = [line["step"] - previous for line, previous in zip(logged, [0] + [m["step"] for m in logged])]
    return {
        **timing,
        "step_time_s": spread([m["perf/step_time_s"] for m in logged], spans),
        "tokens": spread([m["perf/tokens_per_s"] * m["perf/step_time_s"] for m in logged], spans),
        "nonpad_fraction": spread([m["perf/nonpad_fraction"] for m in logged], spans),
        "loss": [m["train/loss"] for m in logged],
        "dropped_samples": logged[-1]["train/dropped_samples"],
    }


def spread(values: list[float], spans: list[int]) -> list[float]:
    """Each interval's value repeated once per step it covers."""
    return [value for value, span in zip(values, spans) for _ in range(span)]


def run_raw(model: Path, split: Path, steps: int, run_dir: Path, feed: str, extra: list[str], ranks: int) -> dict:
    out = run_dir / "raw.json"
    arguments = [
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--feed",
        feed,
        *recipe_overrides(model, split, steps, run_dir, extra),
    ]
    timing = launch(ROOT / "bench/raw_ds_loop.py", arguments, run_dir.with_suffix(".log"), ranks)
    return {**timing, **json.loads(out.read_text())}


def run_hf(model: Path, split: Path, steps: int, run_dir: Path, extra: list[str], ranks: int) -> dict:
    """HF Trainer; its step times are the gaps between `on_step_end` calls (the first from `on_train_begin`)."""
    out = run_dir / "hf.json"
    arguments = ["--steps", str(steps), "--out", str(out), *recipe_overrides(model, split, steps, run_dir, extra)]
    timing = launch(ROOT / "bench/hf_trainer_loop.py", arguments, run_dir.with_suffix(".log"), ranks)
    result = json.loads(out.read_text())
    ends = [result["begin"], *result["step_ends"]]
    return {
        **timing,
        "engine": result["engine"],
        "step_time_s": [b - a for a, b in zip(ends, ends[1:])],
        "tokens": result["tokens"],
        "nonpad_fraction": [t / s for t, s in zip(result["tokens"], result["slots"])],
    }


# --- figures --------------------------------------------------------------------------------------


def step_figures(run: dict, warmup: int) -> dict:
    """Median step time, and non-pad tokens/s and mean non-pad fraction over the steps after the warm-up."""
    times = run["step_time_s"][warmup:]
    figures = {
        "mean_step_s": statistics.fmean(times),
        "median_step_s": statistics.median(times),
        "timed_steps": len(times),
        "wall_s": run["wall_s"],
        "neighbour_cpu_share": run["neighbour_cpu_share"],
    }
    if "tokens" in run:
        figures["tokens_per_s"] = sum(run["tokens"][warmup:]) / sum(times)
        figures["nonpad_fraction"] = statistics.fmean(run["nonpad_fraction"][warmup:])
    for key in ("engine", "dropped_samples"):
        if key in run:
            figures[key] = run[key]
    if "loss" in run:
        figures["first_interval_loss"] = run["loss"][0]  # same batches and weights: padding and packing must agree
    if "phases_s" in run:
        figures["phases_ms"] = {
            phase: 1000 * statistics.median(values[warmup:]) for phase, values in run["phases_s"].items()
        }
    if run.get("collate_s"):
        figures["collate_ms_per_batch"] = 1000 * statistics.median(run["collate_s"])
    return figures


def best(runs: list[dict], key: str, highest: bool) -> dict:
    chosen = (max if highest else min)(runs, key=lambda figures: figures[key])
    return {
        **chosen,
        "all_runs": [figures[key] for figures in runs],
        "all_neighbour_cpu_share": [figures["neighbour_cpu_share"] for figures in runs],
    }


def others_share(seconds: float) -> float:
    """Share of the machine's CPU that other processes use over the next `seconds` (this bench idles)."""
    busy, ours = busy_cpu_seconds(), our_cpu_seconds()
    time.sleep(seconds)
    return ((busy_cpu_seconds() - busy) - (our_cpu_seconds() - ours)) / (seconds * (os.cpu_count() or 1))


def wait_for_quiet(deadline: float) -> float:
    """Until the deadline at most, wait for a window in which others use under QUIET_SHARE of the CPU."""
    start = time.monotonic()
    while others_share(QUIET_WINDOW_S) > QUIET_SHARE and time.monotonic() < deadline:
        pass
    return time.monotonic() - start


def measure(configs: dict, args: argparse.Namespace) -> dict:
    """Every configuration `--repeats` times, rounds interleaved, each run started in a quiet moment and,
    if other processes took more than QUIET_SHARE of the CPU during it, run once more (both kept), as
    long as the time budget lasts; figures of each run."""
    runs = {name: [] for name in configs}
    for round_number in range(1, args.repeats + 1):
        for name, start in configs.items():
            for label in (str(round_number), f"{round_number}-again"):
                waited = wait_for_quiet(args.deadline)
                print(f"[round {round_number}/{args.repeats}] {name} (run {label}) ...", flush=True)
                runs[name].append({**step_figures(start(label), args.warmup), "waited_for_quiet_s": waited})
                if runs[name][-1]["neighbour_cpu_share"] <= QUIET_SHARE or time.monotonic() >= args.deadline:
                    break
    return runs


def overhead(args: argparse.Namespace, model: Path, split: Path) -> dict:
    runs_dir = args.out / "runs"
    configs = {
        "raw": lambda r: run_raw(
            model, split, args.steps, runs_dir / f"raw-{r}", "precollated", args.common, args.ranks
        ),
        "raw_loader": lambda r: run_raw(
            model, split, args.steps, runs_dir / f"raw-loader-{r}", "loader", args.common, args.ranks
        ),
        "ours": lambda r: run_ours(model, split, args.steps, runs_dir / f"ours-{r}", args.common, args.ranks),
    }
    runs = measure(configs, args)
    loops = {name: best(figures, "mean_step_s", highest=False) for name, figures in runs.items()}
    typical = {name: statistics.median(figures["all_runs"]) for name, figures in loops.items()}
    return {
        "loops": loops,
        "ratios": {
            "raw/ours": loops["raw"]["mean_step_s"] / loops["ours"]["mean_step_s"],
            "raw/raw_loader": loops["raw"]["mean_step_s"] / loops["raw_loader"]["mean_step_s"],
            "raw_loader/ours": loops["raw_loader"]["mean_step_s"] / loops["ours"]["mean_step_s"],
            "raw_loader/ours, median runs": typical["raw_loader"] / typical["ours"],
        },
    }


def throughput(args: argparse.Namespace, model: Path, split: Path, plan: dict) -> dict:
    runs_dir, padded, packed = args.out / "runs", plan["max_length_padded"], plan["max_length_packed"]
    configs = {
        "hf": lambda r: run_hf(
            model, split, args.steps, runs_dir / f"hf-{r}", [*args.common, f"model.max_length={padded}"], args.ranks
        ),
        "padding": lambda r: run_ours(
            model,
            split,
            args.steps,
            runs_dir / f"padding-{r}",
            [*args.common, f"model.max_length={padded}", "data.packing=false"],
            args.ranks,
        ),
        "packing": lambda r: run_ours(
            model,
            split,
            args.steps,
            runs_dir / f"packing-{r}",
            [*args.common, f"model.max_length={packed}", "data.packing=true"],
            args.ranks,
        ),
    }
    runs = measure(configs, args)
    trainers = {name: best(figures, "tokens_per_s", highest=True) for name, figures in runs.items()}
    return {
        "plan": plan,
        "trainers": trainers,
        "ratios": {
            "packing/hf": trainers["packing"]["tokens_per_s"] / trainers["hf"]["tokens_per_s"],
            "padding/hf": trainers["padding"]["tokens_per_s"] / trainers["hf"]["tokens_per_s"],
            "packing/padding": trainers["packing"]["tokens_per_s"] / trainers["padding"]["tokens_per_s"],
        },
    }


def verdict(name: str, value: float) -> str:
    return f"goal >= {GOALS[name]}: {'met' if value >= GOALS[name] else 'MISSED'}" if name in GOALS else ""


def run_list(figures: dict, scale: float) -> str:
    """Every run's figure, with the share of the CPU that other processes took meanwhile (* disturbed)."""
    return ", ".join(
        f"{scale * value:.1f} ({share:.0%}{'*' if share > QUIET_SHARE else ''})"
        for value, share in zip(figures["all_runs"], figures["all_neighbour_cpu_share"])
    )


def print_tables(result: dict) -> None:
    if "overhead" in result:
        print(f"\n{'loop':<12}{'mean step ms':>14}   runs (neighbours' CPU share)")
        for name, figures in result["overhead"]["loops"].items():
            print(f"{name:<12}{1000 * figures['mean_step_s']:>14.1f}   {run_list(figures, 1000)}")
        for name, figures in result["overhead"]["loops"].items():
            if "phases_ms" in figures:
                print(
                    f"{name} phases, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in figures["phases_ms"].items())
                )
    if "throughput" in result:
        print(
            f"\n{'trainer':<10}{'tokens/s':>10}{'non-pad':>9}{'mean step ms':>14}"
            "   runs, tokens/s (neighbours' CPU share)"
        )
        for name, figures in result["throughput"]["trainers"].items():
            print(
                f"{name:<10}{figures['tokens_per_s']:>10.0f}{figures['nonpad_fraction']:>9.3f}"
                f"{1000 * figures['mean_step_s']:>14.1f}   {run_list(figures, 1)}"
            )
    print(f"(* other processes used more than {QUIET_SHARE:.0%} of the CPU during that run)\n")
    for section in ("overhead", "throughput"):
        for name, value in result.get(section, {}).get("ratios", {}).items():
            print(f"{name:<30}{value:>6.3f}   {verdict(name, value)}")


def machine() -> dict:
    import deepspeed
    import torch
    import transformers

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    micro = args.micro_batch or load(RECIPE).train.micro_batch_size
    samples = args.ranks * micro * args.steps  # one epoch = exactly --steps micro-batches per rank
    text = wider_text(args.text_width, args.text_layers)
    model = build_tiny_model(
        "llava",
        args.out / (f"base_model-{args.text_width}x{args.text_layers}" if text else "base_model"),
        image_size=SMALL_IMAGE,
        text=text,
    )
    result = {
        "params": {
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "ranks": args.ranks,
            "micro_batch_size": micro,
            "samples_per_dataset": samples,
            "recipe": str(RECIPE.relative_to(ROOT)),
            "text_model": text or "the tiny kit's",
        },
        "machine": machine(),
        "goals": GOALS,
    }
    if args.only in (None, "overhead"):
        result["overhead"] = overhead(args, model, color_split(args.out / "color", samples))
    if args.only in (None, "throughput"):
        varlen = varlen_split(args.out / "varlen", samples)
        plan = packing_plan(token_lengths(varlen, model), rank_batches(varlen, micro, args.steps, args.ranks))
        print(f"variable-length data: {json.dumps(plan)}", flush=True)
        result["throughput"] = throughput(args, model, varlen, plan)
    result["total_s"] = time.perf_counter() - started
    print_tables(result)
    print(f"total {result['total_s']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
