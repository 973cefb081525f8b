"""What to export: a run folder (`RUN`, `RUN:best`, `RUN:latest`), checkpoint folder or adapter folder → its kind,
adapter and training config."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.config.fields import ConfigError
from trainer.config.schema import TrainConfig, load
from trainer.models.dtypes import DTYPES
from trainer.run_folder import (
    ADAPTER,
    ADAPTER_CONFIG,
    CHECKPOINTS,
    COMPLETE,
    LATEST,
    RUN_CONFIG,
    Checkpoint,
    CheckpointError,
    resolve_checkpoint,
)


class ExportError(ValueError):
    """The checkpoint, base or output folder cannot be used; the message names which and why."""


def say(message: str) -> None:
    print(f"[merge] {message}", file=sys.stderr, flush=True)


@dataclass
class Source:
    kind: str  # "lora", "qlora" or "full"
    checkpoint: Path  # the checkpoint folder (or the adapter folder when given one alone)
    adapter: Path | None
    run_config: Path | None  # the run's config.resolved.json, when there is one


def resolve_source(path: Path) -> Source:
    """A run folder (its latest checkpoint, or `RUN:best`), a checkpoint folder or a PEFT adapter folder."""
    try:
        path = resolve_checkpoint(path)
    except CheckpointError as error:
        raise ExportError(f"--checkpoint {path}: {error}") from None
    if (path / ADAPTER_CONFIG).exists():
        if path.name == ADAPTER and Checkpoint(path.parent).is_complete:  # a checkpoint's own adapter
            return with_kind(path.parent, path, run_config_in(Checkpoint(path.parent).run.root))
        return with_kind(path, path, run_config_in(path))  # the trainer leaves a copy of the run's config there
    if not path.is_dir():
        raise ExportError(f"--checkpoint {path}: no such folder")
    checkpoint = Checkpoint(path)
    if not checkpoint.is_complete:
        raise ExportError(
            f"--checkpoint {path}: not a run, a complete checkpoint or an adapter folder "
            f"(no {CHECKPOINTS}/{LATEST}, {COMPLETE} or {ADAPTER_CONFIG})"
        )
    adapter = checkpoint.adapter
    return with_kind(path, adapter if adapter.exists() else None, run_config_in(checkpoint.run.root))


def run_config_in(folder: Path) -> Path | None:
    """A run folder's resolved config, or the copy in an adapter folder."""
    return folder / RUN_CONFIG if (folder / RUN_CONFIG).exists() else None


def with_kind(checkpoint: Path, adapter: Path | None, run_config: Path | None) -> Source:
    settings = json.loads(run_config.read_text()) if run_config else {}
    if adapter is None and settings.get("lora", {}).get("enabled"):
        raise ExportError(f"{checkpoint}: a LoRA run's checkpoint without adapter/ (saved by an older trainer?)")
    if adapter is None and not list(checkpoint.glob("*model_states.pt")):
        raise ExportError(f"{checkpoint}: neither adapter/ nor DeepSpeed *model_states.pt files")
    kind = "full" if adapter is None else "qlora" if settings.get("quant", {}).get("load_in_4bit") else "lora"
    return Source(kind, checkpoint, adapter, run_config)


def training_config(source: Source, base: str | None) -> TrainConfig:
    """The run's training settings with model.path = the base (defaults when only an adapter is given)."""
    if source.run_config is None:
        config = TrainConfig()
        config.model.path = base or adapter_base(source.adapter)
        return config
    try:
        config = load(source.run_config, [f"model.path={base}"] if base else [])
    except ConfigError as error:
        raise ExportError(f"{source.run_config}: {error}") from None
    return config


def adapter_base(adapter: Path | None) -> str:
    settings = json.loads((adapter / ADAPTER_CONFIG).read_text()) if adapter else {}
    recorded = settings.get("base_model_name_or_path")
    if not recorded:
        raise ExportError(
            "--base is required: the checkpoint names no base model (no run config, no "
            "base_model_name_or_path in adapter_config.json)"
        )
    return recorded


def with_dtype(config: TrainConfig, dtype: str) -> TrainConfig:
    changed = copy.deepcopy(config)
    changed.model.dtype = dtype
    return changed


def default_dtype(base: str) -> str:
    """The dtype the base model was published in (config.dtype), else float32."""
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else ""
    return name if name in DTYPES else "float32"
