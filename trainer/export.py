"""Export a training checkpoint as a standalone model: merge a LoRA / QLoRA adapter, or consolidate a
full fine-tuning ZeRO checkpoint, then check the result against the model it came from.

`python launch/merge_lora.py --checkpoint CKPT --out OUT` (see --help). CKPT is a run folder (its
newest checkpoint), a checkpoint folder or a PEFT adapter folder. The phases:
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
import copy
import importlib
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.checkpoint import COMPLETE, LATEST, RUN_CONFIG
from trainer.config import TrainConfig, load
from trainer.conftools import ConfigError
from trainer.weights_reader import SafetensorsWeights
from trainer.zero_reader import ZeroCheckpointError, zero_tensors

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SUMMARY = "merge_summary.json"
EXIT_OK, EXIT_UNUSABLE, EXIT_MISMATCH = 0, 2, 3
# Default tolerance on max |Δlogit| (see `default_tolerance`): absolute for fp32, plus a share of
# max(1, max |logit|) for each half-precision dtype involved.
FLOAT32_TOLERANCE = 1e-3
RELATIVE_TOLERANCE = {torch.bfloat16: 4e-2, torch.float16: 5e-3}
CONSOLIDATION_CHUNKS = 64  # pages of 1/64 of the checkpoint read at most before a reopen unmaps them
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class ExportError(ValueError):
    """The checkpoint, base or output folder cannot be used; the message names which and why."""


def say(message: str) -> None:
    print(f"[merge] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- what to export

@dataclass
class Source:
    kind: str  # "lora", "qlora" or "full"
    checkpoint: Path  # the checkpoint folder (or the adapter folder when given one alone)
    adapter: Path | None
    run_config: Path | None  # the run's config.resolved.json, when there is one


def resolve_source(path: Path) -> Source:
    """A run folder (its `checkpoints/latest`), a checkpoint folder or a PEFT adapter folder."""
    path = Path(path)
    if (path / "checkpoints" / LATEST).exists():
        path = path / "checkpoints" / (path / "checkpoints" / LATEST).read_text().strip()
    if (path / "adapter_config.json").exists():
        if path.name == "adapter" and (path.parent / COMPLETE).exists():  # a checkpoint's own adapter
            return with_kind(path.parent, path, run_config_in(path.parents[2]))
        return with_kind(path, path, run_config_in(path))  # the trainer leaves a copy of the run's config there
    if not path.is_dir():
        raise ExportError(f"--checkpoint {path}: no such folder")
    if not (path / COMPLETE).exists():
        raise ExportError(f"--checkpoint {path}: not a run, a complete checkpoint or an adapter folder "
                          f"(no {LATEST}, {COMPLETE} or adapter_config.json)")
    adapter = path / "adapter"
    return with_kind(path, adapter if adapter.exists() else None, run_config_in(path.parents[1]))


def run_config_in(run: Path) -> Path | None:
    return run / RUN_CONFIG if (run / RUN_CONFIG).exists() else None


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
    settings = json.loads((adapter / "adapter_config.json").read_text()) if adapter else {}
    recorded = settings.get("base_model_name_or_path")
    if not recorded:
        raise ExportError("--base is required: the checkpoint names no base model (no run config, no "
                          "base_model_name_or_path in adapter_config.json)")
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


# ---------------------------------------------------------------------------------------------- models

def load_base(config: TrainConfig) -> nn.Module:
    from trainer.model import load_base_model

    return load_base_model(config, torch.device("cpu"))


def with_adapter(base: nn.Module, adapter: Path) -> nn.Module:
    """PeftModel over `base`; refuses an adapter file whose tensors do not match the adapter's layers."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    model = PeftModel.from_pretrained(base, str(adapter))
    weights = adapter / "adapter_model.safetensors"
    if weights.exists():
        with safe_open(str(weights), "pt") as stored:
            found = set(stored.keys())
        expected = set(get_peft_model_state_dict(model))
        if found != expected:
            raise ExportError(f"{weights}: missing {sorted(expected - found)[:3]}, unexpected "
                              f"{sorted(found - expected)[:3]} ({len(expected ^ found)} tensors differ)")
    return model


def dequantised(model: nn.Module) -> nn.Module:
    """Every bitsandbytes Linear4bit replaced by an nn.Linear holding its dequantised weight
    (`bitsandbytes.functional.dequantize_4bit`), everything in fp32, no quantisation config left."""
    import bitsandbytes as bnb

    model = model.dequantize(dtype=torch.float32).float()
    left = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    if left or getattr(model.config, "quantization_config", None) is not None:
        raise RuntimeError(f"dequantisation left 4-bit layers {left[:3]} or a quantization_config behind")
    return model


def empty_model(base: str) -> nn.Module:
    """The base model's architecture with no weights (meta tensors)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(base))


def filled(model: nn.Module, tensors, dtype: str, origin: str, base: str) -> nn.Module:
    """`model` (empty) given each (name, tensor) in `dtype` as it comes; every tensor of the base must arrive."""
    from accelerate.utils import set_module_tensor_to_device

    own = set(model.state_dict())
    for name, tensor in tensors:
        if name not in own:
            raise ExportError(f"{origin}: holds {name}, which the base model {base} does not have")
        set_module_tensor_to_device(model, name, "cpu", value=tensor, dtype=DTYPES[dtype])
    model.tie_weights()  # a tied head (Gemma, InternVL) is not stored: it is the input embedding
    empty = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if empty:
        raise ExportError(f"{origin}: lacks {len(empty)} tensors of the base model, e.g. {empty[:3]}")
    model.generation_config = base_generation_config(base, model.generation_config)
    return model


def consolidated(checkpoint: Path, base: str, dtype: str) -> nn.Module:
    """The base model's architecture holding the checkpoint's weights in `dtype`. The base weights are never
    loaded (the checkpoint holds every tensor, frozen ones included): the model starts empty and receives
    one gathered tensor at a time."""
    return filled(empty_model(base), zero_tensors(checkpoint, CONSOLIDATION_CHUNKS), dtype, str(checkpoint), base)


def lora_merged(config: TrainConfig, adapter: Path, dtype: str) -> nn.Module:
    """Base + adapter merged in fp32 arithmetic, held in `dtype`. The base is read into `dtype` one tensor at a
    time and each LoRA-targeted weight is read again in fp32 for its merge (peft's own, then rounded once),
    so memory holds the output-sized model plus one fp32 weight, whatever dtype the base was published in.
    Where its weights cannot be read that way (no local safetensors, or tensors that transformers merges or
    splits while loading), the whole base is loaded by transformers instead, in fp32
    unless it was published in `dtype` (`merge_dtype`)."""
    base = config.model.path
    weights, model = SafetensorsWeights.open(base), empty_model(base)
    stored = weights.model_names(model) if weights is not None else None
    if stored is None:
        say(f"{base}: weights not readable one by one under the model's names; loading the whole base")
        return with_adapter(load_base(with_dtype(config, merge_dtype(base, dtype))), adapter).merge_and_unload()
    model = filled(model, ((name, weights.read(stored[name])) for name in sorted(stored)), dtype, base, base)
    adapted = with_adapter(model, adapter)
    for name, layer in lora_layers(adapted):
        base_layer = layer.get_base_layer()
        base_layer.weight.data = weights.read(stored[f"{name}.weight"]).float()
        layer.merge()
        base_layer.weight.data = base_layer.weight.data.to(DTYPES[dtype])
    return adapted.unload()


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name in the base model, layer) of every LoRA layer of a PeftModel."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in model.base_model.model.named_modules() if isinstance(module, LoraLayer)]


def base_generation_config(base: str, fallback):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(base)
    except OSError:
        return fallback


def merged_model(source: Source, config: TrainConfig, dtype: str) -> nn.Module:
    """The exported model: merged in fp32 (LoRA, QLoRA) or consolidated into the base in `dtype` (full)."""
    if source.kind == "full":
        return consolidated(source.checkpoint, config.model.path, dtype)
    if source.kind == "qlora":  # quantised as in training, then dequantised
        return with_adapter(dequantised(load_base(config)), source.adapter).merge_and_unload()
    return lora_merged(config, source.adapter, dtype)


def merge_dtype(base: str, dtype: str) -> str:
    """The dtype to hold a whole base in while merging. Its own when that is the output dtype: upcasting it is
    exact and peft adds the fp32 delta in fp32 arithmetic, rounding once to the output (W + ΔW, as a merge
    in fp32 then cast would), while memory holds the output-sized model, not an fp32 one. Else float32."""
    return dtype if default_dtype(base) == dtype else "float32"


def reference_model(source: Source, config: TrainConfig) -> nn.Module:
    """The model as trained, in eval mode: base + adapter in fp32; QLoRA: the 4-bit base as in training
    + adapter, its 4-bit layers left in train mode (an eval-mode forward would repack their weights for
    bitsandbytes' inference kernel, see NOTES-ENV); full: the consolidated fp32 weights."""
    if source.kind == "full":
        return consolidated(source.checkpoint, config.model.path, "float32").eval()
    if source.kind == "lora":
        return with_adapter(load_base(with_dtype(config, "float32")), source.adapter).eval()
    import bitsandbytes as bnb

    model = with_adapter(load_base(config), source.adapter).eval()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.train()
    return model


# ---------------------------------------------------------------------------------------------- memory

def import_libraries(kind: str) -> None:
    """Imported before the memory baseline is taken, so that the peak's excess over it is data, not code."""
    extra = {"full": ["deepspeed.utils.zero_to_fp32"], "qlora": ["bitsandbytes"]}.get(kind, [])
    for module in ["peft", "transformers.models.auto.modeling_auto", "trainer.model", "trainer.processor", *extra]:
        importlib.import_module(module)


def return_freed_memory_promptly() -> None:
    """glibc: serve allocations of 1 MiB and up from their own mappings, unmapped when freed. By default
    glibc raises that threshold after the first such free (to 32 MiB), and the merge's per-layer fp32
    temporaries then land in the heap between longer-lived tensors, where freeing them returns nothing
    to the system: a bf16 export of a 1.2 GB model kept 0.8 GB of freed fp32 weights resident."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has no such threshold


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Linux: restart the process's peak-RSS count (VmHWM), so a phase is measured on its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------- saving

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
    from trainer.processor import load_processor

    model.to(DTYPES[dtype]).save_pretrained(out, max_shard_size=max_shard_size)
    processor = load_processor(base)
    use_chat_template(processor, base, chat_template)
    processor.save_pretrained(out)
    return sum(f.stat().st_size for f in out.glob("*.safetensors"))


def data_fingerprint(config: TrainConfig) -> str | None:
    """`source.fingerprint` of the training split's index.json, where it can be found."""
    from data_shards.write import INDEX_NAME, load_index

    if not (config.data.index or config.data.train):
        return None
    index = Path(config.data.index or Path(config.data.train) / INDEX_NAME)
    try:
        return load_index(index).get("source", {}).get("fingerprint")
    except (OSError, ValueError):
        return None


def model_card(source: Source, config: TrainConfig, summary: dict) -> str:
    import yaml

    state = source.checkpoint / "trainer_state.json"
    step = json.loads(state.read_text()).get("step") if state.exists() else None
    settings = json.loads(source.run_config.read_text()) if source.run_config else None
    kinds = {"lora": "LoRA adapter merged", "qlora": "QLoRA adapter merged into the dequantised 4-bit base",
             "full": "full fine-tuning, ZeRO checkpoint consolidated"}
    lines = [
        "---", f"base_model: {config.model.path}", "library_name: transformers",
        "tags: [shardtune, image-text-to-text]", "---", f"# {Path(summary['out']).name}", "",
        f"Exported by shardtune ({kinds[source.kind]}). Loads with `AutoModelForImageTextToText` and "
        "`AutoProcessor`.", "",
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
    return (f"max |Δlogit| {summary['max_abs_logit_diff']:.3g} vs the trained model on {summary['verify_samples']} "
            f"{summary['verify_source']} samples (tolerance {summary['tolerance']:.3g})")


# ---------------------------------------------------------------------------------------------- verification

def verification_samples(config: TrainConfig, count: int) -> tuple[list, str]:
    """The first `count` samples of data.val, or synthetic ones where there is no readable val split."""
    from data_shards.sample import Sample
    from data_shards.stream import ShardStream, StreamConfig

    if config.data.val:
        try:
            stream = ShardStream(config.data.val, config=StreamConfig(shuffle=False), rank=0, world_size=1)
            samples = list(itertools.islice((s for s in stream if isinstance(s, Sample)), count))
            if samples:
                return samples, "data.val"
        except (OSError, ValueError) as error:
            say(f"data.val {config.data.val} cannot be read ({error}): verifying on synthetic samples")
    return synthetic_samples(count), "synthetic"


def synthetic_samples(count: int) -> list:
    """Random-pixel images with a question and an answer (seeded, so every run compares the same inputs)."""
    import io

    import numpy as np
    from PIL import Image

    from data_shards.sample import IMAGE_TOKEN, ImageData, Sample, Turn

    generator = np.random.default_rng(0)
    samples = []
    for number in range(count):
        buffer = io.BytesIO()
        Image.fromarray(generator.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        turns = [Turn("user", f"{IMAGE_TOKEN}\nWhat is shown in this image?"), Turn("assistant", "A shape.")]
        samples.append(Sample(f"synthetic-{number}", [ImageData(buffer.getvalue(), "png")], turns))
    return samples


def verification_batches(samples: list, out: Path, max_length: int) -> list[dict[str, torch.Tensor]]:
    """One sample per batch (no padding), encoded by the exported processor as in training."""
    from transformers import AutoConfig

    from trainer.chat.template import template_source
    from trainer.collate import Collator, token_check_for
    from trainer.processor import load_processor

    config = AutoConfig.from_pretrained(out)
    collator = Collator(load_processor(out), max_length, *token_check_for(config), template_source=template_source(out),
                        model_type=config.model_type)
    batches = [collator([sample]) for sample in samples]
    kept = [{k: v for k, v in batch.inputs.items() if k != "labels"} for batch in batches if len(batch)]
    if not kept:
        raise ExportError(f"no verification sample fits model.max_length={max_length}")
    return kept


@torch.no_grad()
def masked_logits(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """fp32 logits at the real (attention-mask) positions of each batch, computed as the trainer computes them
    (Mllama's image-free tokens as in Meta's reference, `trainer.mllama_fix`)."""
    from trainer.evaluation import dtype_of, move
    from trainer.mllama_fix import mask_image_free_rows

    mask_image_free_rows(model)
    dtype = dtype_of(model)
    return [model(**move(b, torch.device("cpu"), dtype), use_cache=False).logits[b["attention_mask"].bool()].float()
            for b in batches]


def verify(source: Source, config: TrainConfig, out: Path, count: int) -> dict:
    """Max |Δlogit| between the model as trained and OUT reloaded by plain transformers (one model at a time)."""
    from transformers import AutoModelForImageTextToText

    samples, where = verification_samples(config, count)
    batches = verification_batches(samples, out, config.model.max_length)
    reference = masked_logits(reference_model(source, config), batches)
    exported = masked_logits(AutoModelForImageTextToText.from_pretrained(out).eval(), batches)
    difference = max(float((got - want).abs().max()) for got, want in zip(exported, reference))
    return {"max_abs_logit_diff": difference, "max_abs_logit": max(float(r.abs().max()) for r in reference),
            "verify_samples": len(batches), "verify_source": where}


def reference_dtype(source: Source, config: TrainConfig) -> torch.dtype:
    """QLoRA's reference computes in its 4-bit layers' compute dtype (model.dtype); the others in fp32."""
    return DTYPES[config.model.dtype] if source.kind == "qlora" else torch.float32


def default_tolerance(out_dtype: torch.dtype, compute_dtype: torch.dtype, logit_scale: float) -> float:
    """1e-3 where everything is fp32 (merging only reorders fp32 sums: measured ≤ 3e-5). Each half-precision
    dtype involved (the exported weights; QLoRA's compute dtype) adds RELATIVE_TOLERANCE × max(1, max |logit|):
    its rounding errors grow with the logits. Measured on tiny and ~100M-parameter LLaVAs: bf16 ≤ 1.4 %,
    fp16 ≤ 0.15 % of max |logit|; the defaults allow about 3× that, far below what a LoRA adapter moves."""
    relative = sum(RELATIVE_TOLERANCE[d] for d in {out_dtype, compute_dtype} if d in RELATIVE_TOLERANCE)
    return FLOAT32_TOLERANCE + relative * max(1.0, logit_scale)


# ---------------------------------------------------------------------------------------------- command line

def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="launch/merge_lora.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("--checkpoint", type=Path, required=True,
                      help="run folder (its newest checkpoint), checkpoint folder, or PEFT adapter folder")
    root.add_argument("--base", help="base model folder or hub id (default: model.path of the run's config)")
    root.add_argument("--out", type=Path, required=True, help="output folder: absent or empty, unless --force")
    root.add_argument("--dtype", choices=list(DTYPES), help="dtype of the exported weights (default: the base model's)")
    root.add_argument("--force", action="store_true", help="replace a non-empty --out")
    root.add_argument("--max-shard-size", default="2GB", help="largest safetensors file, e.g. 500MB or 2GB")
    root.add_argument("--tolerance", type=float,
                      help="largest accepted max |Δlogit| (default: 1e-3 for float32, relative for bf16/fp16)")
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
    summary = {"checkpoint": str(source.checkpoint), "kind": source.kind, "base": base, "out": str(args.out),
               "dtype": dtype, **export_weights(source, config, args.out, dtype, args.max_shard_size)}
    summary.update(verification(source, config, args, summary))
    (args.out / "README.md").write_text(model_card(source, config, summary))
    (args.out / SUMMARY).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if summary["passed"] is False:
        say(f"verification FAILED: max |Δlogit| {summary['max_abs_logit_diff']:.3g} > tolerance "
            f"{summary['tolerance']:.3g} (see {args.out / SUMMARY})")
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
    merged_bytes = save(merged_model(source, config, dtype), out, dtype, max_shard_size, config.model.path,
                        config.model.chat_template)
    peak = peak_rss()
    say(f"wrote {merged_bytes / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s; peak RSS "
        f"{peak / 2**20:.0f} MiB ({peak / merged_bytes:.2f}× the weights; {before / 2**20:.0f} MiB before loading)")
    return {"merged_bytes": merged_bytes, "rss_before_bytes": before, "peak_rss_bytes": peak,
            "peak_rss_ratio": peak / merged_bytes, "peak_rss_delta_ratio": (peak - before) / merged_bytes,
            "peak_rss_scope": "merge and save" if phase_only else "whole process (VmHWM could not be reset)",
            "merge_seconds": time.perf_counter() - started}


def verification(source: Source, config: TrainConfig, args: argparse.Namespace, summary: dict) -> dict:
    if args.verify_samples <= 0:
        say("verification skipped (--verify-samples 0)")
        return {"max_abs_logit_diff": None, "tolerance": None, "passed": None}
    started = time.perf_counter()
    result = verify(source, config, args.out, args.verify_samples)
    tolerance = args.tolerance if args.tolerance is not None else default_tolerance(
        DTYPES[summary["dtype"]], reference_dtype(source, config), result["max_abs_logit"])
    passed = result["max_abs_logit_diff"] <= tolerance  # False for NaN
    say(f"verified on {result['verify_samples']} {result['verify_source']} samples: max |Δlogit| "
        f"{result['max_abs_logit_diff']:.3g} (max |logit| {result['max_abs_logit']:.3g}, tolerance {tolerance:.3g})")
    return {**result, "tolerance": tolerance, "passed": passed, "verify_seconds": time.perf_counter() - started}
