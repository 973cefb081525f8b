"""Saving the export: the output folder checked, sharded safetensors, processor, chat template, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from torch import nn

from data_shards.index import INDEX_NAME, load_index
from trainer.config.schema import TrainConfig
from trainer.export.source import ExportError, Source
from trainer.models.dtypes import DTYPES
from trainer.run_folder import Checkpoint

MERGE_SUMMARY = "merge_summary.json"


def prepare_out(out: Path, force: bool, inputs: list[Path]) -> None:
    out = out.resolve()
    for path in inputs:
        if path.exists() and (out == path.resolve() or out in path.resolve().parents):
            raise ExportError(f"--out {out}: holds the input {path}; choose another folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ExportError(f"--out {out} is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def save(model: nn.Module, out: Path, dtype: str, max_shard_size: str, base: str, chat_template: str = "") -> int:
    """Weights in `dtype` (transformers 5 always writes safetensors), config, generation config, processor with the
    chat template the run trained with (`model.chat_template`, when it replaced the base's)."""
    from trainer.chat.template import use_chat_template
    from trainer.models.processor import load_processor

    model.to(DTYPES[dtype]).save_pretrained(out, max_shard_size=max_shard_size)
    processor = load_processor(base)
    use_chat_template(processor, base, chat_template)
    processor.save_pretrained(out)
    return sum(f.stat().st_size for f in out.glob("*.safetensors"))


def data_fingerprint(config: TrainConfig) -> str | None:
    """`source.fingerprint` of the training split's index.json, where it can be found."""

    if not (config.data.index or config.data.train):
        return None
    index = Path(config.data.index or Path(config.data.train) / INDEX_NAME)
    try:
        return load_index(index).get("source", {}).get("fingerprint")
    except (OSError, ValueError):
        return None


def model_card(source: Source, config: TrainConfig, summary: dict) -> str:

    state = Checkpoint(source.checkpoint).trainer_state
    step = json.loads(state.read_text()).get("step") if state.exists() else None
    settings = json.loads(source.run_config.read_text()) if source.run_config else None
    kinds = {
        "lora": "LoRA adapter merged",
        "qlora": "QLoRA adapter merged into the dequantised 4-bit base",
        "full": "full fine-tuning, ZeRO checkpoint consolidated",
    }
    lines = [
        "---",
        f"base_model: {config.model.path}",
        "library_name: transformers",
        "tags: [shardtune, image-text-to-text]",
        "---",
        f"# {Path(summary['out']).name}",
        "",
        f"Exported by shardtune ({kinds[source.kind]}). Loads with `AutoModelForImageTextToText` and `AutoProcessor`.",
        "",
        f"- Base model: `{config.model.path}`",
        f"- Checkpoint: `{source.checkpoint}`" + (f" (step {step})" if step is not None else ""),
        f"- Training data: `{config.data.train or 'unknown'}`, index fingerprint "
        f"`{data_fingerprint(config) or 'unknown'}`",
        f"- Weights: {summary['dtype']}, {summary['merged_bytes'] / 2**20:.1f} MiB",
        f"- Verification: {verification_line(summary)}",
    ]
    if settings:
        dumped = yaml.safe_dump(settings, sort_keys=False).rstrip()
        lines += ["", "## Training configuration", "", "```yaml", dumped, "```"]
    return "\n".join(lines) + "\n"


def verification_line(summary: dict) -> str:
    if summary["max_abs_logit_diff"] is None:
        return "skipped (--verify-samples 0)"
    return (
        f"max |Δlogit| {summary['max_abs_logit_diff']:.3g} vs the trained model on {summary['verify_samples']} "
        f"{summary['verify_source']} samples (tolerance {summary['tolerance']:.3g})"
    )
