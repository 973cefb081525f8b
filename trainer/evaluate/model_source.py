"""Which model to load (a model folder, or a checkpoint's adapter on its base) and loading it for inference."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.models.dtypes import DTYPES
from trainer.models.loading import four_bit_config
from trainer.models.mllama_fix import mask_image_free_rows
from trainer.models.processor import load_processor
from trainer.run_folder import ADAPTER, ADAPTER_CONFIG, RUN_CONFIG, Checkpoint, CheckpointError, resolve_checkpoint


class UsageError(ValueError):
    """A path or option that cannot be used (missing model, checkpoint or image; bad --choices); says which."""


@dataclass
class ModelSource:
    """What to load: a model (a folder or hub id), optionally with a PEFT adapter on top."""

    model: str
    adapter: Path | None = None
    dtype: str = "auto"
    quant: dict | None = None
    objective: str = "lm"  # the checkpoint's train.objective: how its closed-set answers are best scored

    def describe(self) -> dict[str, str | None]:
        return {
            "model": self.model,
            "adapter": str(self.adapter) if self.adapter else None,
            "dtype": self.dtype,
            "quant": self.quant["quant_type"] if self.quant else None,
        }


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="a plain or merged Hugging Face model folder")
    which.add_argument(
        "--checkpoint",
        type=Path,
        help="a training run folder (its latest checkpoint), RUN:best or RUN:latest, a checkpoint folder, "
        "or an adapter folder",
    )
    group.add_argument("--base", help="base model of --checkpoint (default: the run's config.resolved.json model.path)")
    group.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="weights dtype (auto: the run's model.dtype for --checkpoint, else the saved one)",
    )


def source_from_args(args: argparse.Namespace) -> ModelSource:
    if args.model is not None:
        if args.base:
            raise UsageError("--base goes with --checkpoint; --model is a whole model already")
        if not args.model.is_dir():
            raise UsageError(f"--model {args.model}: no such model folder")
        return ModelSource(str(args.model), None, args.dtype)
    adapter = find_adapter(args.checkpoint)
    run_config = read_run_config(adapter)
    base = args.base or run_config.get("model", {}).get("path") or recorded_base(adapter)
    if not base:
        raise UsageError(f"--checkpoint {args.checkpoint}: no base model recorded; pass --base")
    dtype = args.dtype if args.dtype != "auto" else run_config.get("model", {}).get("dtype", "auto")
    quant = run_config.get("quant") if run_config.get("quant", {}).get("load_in_4bit") else None
    return ModelSource(base, adapter, dtype, quant, run_config.get("train", {}).get("objective", "lm"))


def find_adapter(path: Path) -> Path:
    """The adapter folder of a run folder (its latest checkpoint, or `RUN:best`), a checkpoint folder, or an
    adapter folder."""
    try:
        path = resolve_checkpoint(path)
    except CheckpointError as error:
        raise UsageError(f"--checkpoint {path}: {error}") from None
    if not path.is_dir():
        raise UsageError(f"--checkpoint {path}: no such folder")
    if (path / ADAPTER / ADAPTER_CONFIG).exists():
        path = path / ADAPTER
    if not (path / ADAPTER_CONFIG).exists():
        raise UsageError(
            f"--checkpoint {path}: no PEFT adapter (a run trained without LoRA has none: "
            "export it to a model folder and pass --model)"
        )
    return path


def read_run_config(adapter: Path) -> dict:
    """The training run's resolved config: the copy the trainer saves in the adapter folder, else the run's
    for a `checkpoints/stepN/adapter/` folder ({} when neither exists)."""
    if (adapter / RUN_CONFIG).exists():
        return json.loads((adapter / RUN_CONFIG).read_text())
    if adapter.name == ADAPTER:
        return Checkpoint(adapter.parent).run.read_run_config()
    return {}


def recorded_base(adapter: Path) -> str | None:
    return json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")


def load_model(source: ModelSource, device: torch.device):
    """(model in eval mode on `device`, processor); an unloadable model is a UsageError."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    dtype = DTYPES.get(source.dtype, "auto")
    quantized = {}
    if source.quant:  # a QLoRA adapter runs on the 4-bit base it was trained against
        compute = dtype if isinstance(dtype, torch.dtype) else torch.float32
        quantized = {
            "quantization_config": four_bit_config(source.quant["quant_type"], source.quant["double_quant"], compute),
            "device_map": {"": device},
        }
    try:
        model = AutoModelForImageTextToText.from_pretrained(source.model, dtype=dtype, **quantized)
        mask_image_free_rows(model)
        processor = load_processor(source.model)
    except OSError as error:
        local = "" if Path(source.model).exists() else "no such folder; as a hub id: "
        hint = " (--base picks another base model)" if source.adapter is not None else ""
        raise UsageError(f"cannot load model {source.model}: {local}{first_line(error)}{hint}") from None
    if source.adapter is not None:
        model = PeftModel.from_pretrained(model, str(source.adapter))
    return (model if source.quant else model.to(device)).eval(), processor


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
