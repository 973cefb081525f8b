"""Export a training checkpoint as a standalone model: merge a LoRA / QLoRA adapter, or consolidate a
full fine-tuning ZeRO checkpoint, then check the result against the model it came from.

`python launch/merge_lora.py --checkpoint CKPT --out OUT` (see --help). CKPT is a run folder (its
newest checkpoint), `RUN:best` or `RUN:latest`, a checkpoint folder or a PEFT adapter folder. The phases:
  1. merge, in fp32: base + adapter → `merge_and_unload`; for QLoRA the adapter was trained against
     the 4-bit weights, so it is merged into the dequantised 4-bit weights, not the original ones;
     a checkpoint without adapter is consolidated from DeepSpeed's ZeRO-2/3 files, one tensor at a time;
  2. save in `--dtype` (safetensors, sharded), with processor, chat template, generation config and
     a model card; the peak resident memory of phases 1–2 is measured;
  3. verify: logits of the model as trained (base + adapter in fp32; for QLoRA the 4-bit base + adapter,
     as in training) against OUT reloaded by plain transformers, on a few validation samples.
Exit codes: 0 done, 2 unusable arguments or inputs, 3 verification failed (OUT is kept for inspection).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trainer.config.schema import TrainConfig
from trainer.export.memory import current_rss, import_libraries, peak_rss, reset_peak_rss, return_freed_memory_promptly
from trainer.export.merge import merged_model
from trainer.export.save import MERGE_SUMMARY, model_card, prepare_out, save
from trainer.export.source import ExportError, Source, default_dtype, resolve_source, say, training_config
from trainer.export.verify import default_tolerance, reference_dtype, verify
from trainer.export.zero_reader import ZeroCheckpointError
from trainer.models.dtypes import DTYPES

EXIT_OK, EXIT_UNUSABLE, EXIT_MISMATCH = 0, 2, 3


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="launch/merge_lora.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="run folder (its newest checkpoint), RUN:best or RUN:latest, checkpoint folder, or PEFT adapter folder",
    )
    root.add_argument("--base", help="base model folder or hub id (default: model.path of the run's config)")
    root.add_argument("--out", type=Path, required=True, help="output folder: absent or empty, unless --force")
    root.add_argument("--dtype", choices=list(DTYPES), help="dtype of the exported weights (default: the base model's)")
    root.add_argument("--force", action="store_true", help="replace a non-empty --out")
    root.add_argument("--max-shard-size", default="2GB", help="largest safetensors file, e.g. 500MB or 2GB")
    root.add_argument(
        "--tolerance",
        type=float,
        help="largest accepted max |Δlogit| (default: 1e-3 for float32, relative for bf16/fp16)",
    )
    root.add_argument("--verify-samples", type=int, default=4, help="samples to verify on (0: no verification)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return export(args)
    except (ExportError, ZeroCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE


def export(args: argparse.Namespace) -> int:
    source = resolve_source(args.checkpoint)
    config = training_config(source, args.base)
    base = config.model.path
    dtype = args.dtype or checked_default_dtype(base)
    prepare_out(args.out, args.force, [source.checkpoint, Path(base)])
    say(f"{source.kind} checkpoint {source.checkpoint} + base {base} → {args.out} ({dtype})")
    summary = {
        "checkpoint": str(source.checkpoint),
        "kind": source.kind,
        "base": base,
        "out": str(args.out),
        "dtype": dtype,
        **export_weights(source, config, args.out, dtype, args.max_shard_size),
    }
    summary.update(verification(source, config, args, summary))
    (args.out / "README.md").write_text(model_card(source, config, summary))
    (args.out / MERGE_SUMMARY).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if summary["passed"] is False:
        say(
            f"verification FAILED: max |Δlogit| {summary['max_abs_logit_diff']:.3g} > tolerance "
            f"{summary['tolerance']:.3g} (see {args.out / MERGE_SUMMARY})"
        )
        return EXIT_MISMATCH
    return EXIT_OK


def checked_default_dtype(base: str) -> str:
    try:
        return default_dtype(base)
    except OSError as error:
        raise ExportError(f"--base {base}: cannot read its config ({error})") from None


def export_weights(source: Source, config: TrainConfig, out: Path, dtype: str, max_shard_size: str) -> dict:
    """Phases 1–2, with their peak resident memory next to the exported weights' size."""
    import_libraries(source.kind)
    return_freed_memory_promptly()
    started = time.perf_counter()
    phase_only = reset_peak_rss()
    before = current_rss()
    merged_bytes = save(
        merged_model(source, config, dtype), out, dtype, max_shard_size, config.model.path, config.model.chat_template
    )
    peak = peak_rss()
    say(
        f"wrote {merged_bytes / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s; peak RSS "
        f"{peak / 2**20:.0f} MiB ({peak / merged_bytes:.2f}× the weights; {before / 2**20:.0f} MiB before loading)"
    )
    return {
        "merged_bytes": merged_bytes,
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "peak_rss_ratio": peak / merged_bytes,
        "peak_rss_delta_ratio": (peak - before) / merged_bytes,
        "peak_rss_scope": "merge and save" if phase_only else "whole process (VmHWM could not be reset)",
        "merge_seconds": time.perf_counter() - started,
    }


def verification(source: Source, config: TrainConfig, args: argparse.Namespace, summary: dict) -> dict:
    if args.verify_samples <= 0:
        say("verification skipped (--verify-samples 0)")
        return {"max_abs_logit_diff": None, "tolerance": None, "passed": None}
    started = time.perf_counter()
    result = verify(source, config, args.out, args.verify_samples)
    tolerance = (
        args.tolerance
        if args.tolerance is not None
        else default_tolerance(DTYPES[summary["dtype"]], reference_dtype(source, config), result["max_abs_logit"])
    )
    passed = result["max_abs_logit_diff"] <= tolerance  # False for NaN
    say(
        f"verified on {result['verify_samples']} {result['verify_source']} samples: max |Δlogit| "
        f"{result['max_abs_logit_diff']:.3g} (max |logit| {result['max_abs_logit']:.3g}, tolerance {tolerance:.3g})"
    )
    return {**result, "tolerance": tolerance, "passed": passed, "verify_seconds": time.perf_counter() - started}
