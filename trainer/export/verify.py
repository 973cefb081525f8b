"""Verification: logits of the exported model, reloaded by plain transformers, against the model as trained."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from data_shards.sample import IMAGE_TOKEN, ImageData, Sample, Turn
from data_shards.stream import ShardStream, StreamConfig
from trainer.chat.template import template_source
from trainer.config.schema import TrainConfig
from trainer.evaluate.generation import dtype_of, move
from trainer.export.merge import reference_model
from trainer.export.source import ExportError, Source, say
from trainer.models.dtypes import DTYPES
from trainer.progress import progress

# Default tolerance on max |Δlogit| (see `default_tolerance`): absolute for fp32, plus a share of
# max(1, max |logit|) for each half-precision dtype involved.
FLOAT32_TOLERANCE = 1e-3
RELATIVE_TOLERANCE = {torch.bfloat16: 4e-2, torch.float16: 5e-3}


def verification_samples(config: TrainConfig, count: int) -> tuple[list, str]:
    """The first `count` samples of data.val, or synthetic ones where there is no readable val split."""

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

    from trainer.batches.collate import Collator, token_check_for
    from trainer.models.processor import load_processor

    config = AutoConfig.from_pretrained(out)
    collator = Collator(
        load_processor(out),
        max_length,
        *token_check_for(config),
        template_source=template_source(out),
        model_type=config.model_type,
    )
    batches = [collator([sample]) for sample in samples]
    kept = [{k: v for k, v in batch.inputs.items() if k != "labels"} for batch in batches if len(batch)]
    if not kept:
        raise ExportError(f"no verification sample fits model.max_length={max_length}")
    return kept


@torch.no_grad()
def masked_logits(model: nn.Module, batches: list[dict[str, torch.Tensor]], what: str) -> list[torch.Tensor]:
    """fp32 logits at the real (attention-mask) positions of each batch, computed as the trainer computes them
    (Mllama's image-free tokens as in Meta's reference, `trainer.models.mllama_fix`)."""
    from trainer.models.mllama_fix import mask_image_free_rows

    mask_image_free_rows(model)
    dtype = dtype_of(model)
    return [
        model(**move(b, torch.device("cpu"), dtype), use_cache=False).logits[b["attention_mask"].bool()].float()
        for b in progress(batches, len(batches), what, "sample")
    ]


def verify(source: Source, config: TrainConfig, out: Path, count: int) -> dict:
    """Max |Δlogit| between the model as trained and OUT reloaded by plain transformers (one model at a time)."""
    from transformers import AutoModelForImageTextToText

    samples, where = verification_samples(config, count)
    batches = verification_batches(samples, out, config.model.max_length)
    reference = masked_logits(reference_model(source, config), batches, "verify: as trained")
    exported = masked_logits(AutoModelForImageTextToText.from_pretrained(out).eval(), batches, "verify: exported")
    difference = max(float((got - want).abs().max()) for got, want in zip(exported, reference))
    return {
        "max_abs_logit_diff": difference,
        "max_abs_logit": max(float(r.abs().max()) for r in reference),
        "verify_samples": len(batches),
        "verify_source": where,
    }


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
