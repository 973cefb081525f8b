"""Model states per rank (weights, gradients, master weights, optimizer moments, communication buffers) for the
ZeRO stage, offload and precision a resolved DeepSpeed config chooses.

The layout follows DeepSpeed 0.19's engines (bytes per element: d for the model dtype, 4 for fp32; W ranks):

| stage | weights | gradients | fp32 master | Adam moments | buffers |
|---|---|---|---|---|---|
| 0, fp32 | all, d | trained, d | none | 2 d (torch AdamW on the weights) | none |
| 0, bf16/fp16 | all, d | trained, 4 (accumulated in fp32) | 4 / W | 8 / W | none |
| 1 | all, d | trained, 4 | 4 / W | 8 / W | reduce buckets |
| 2 | all, d | 4 / W (the owned partition) | 4 / W | 8 / W | reduce buckets |
| 3 | d / W + the gathered working set | 4 / W | 4 / W | 8 / W | reduce and prefetch buckets |

Reduce buckets: `reduce_bucket_size` elements of dtype d, two with `overlap_comm`. ZeRO-3's gathered working
set: up to `stage3_max_live_parameters` elements of gathered weights. On the CPU only what is written is
resident, so a bucket counts as the part of it the trained parameters fill (`touched_only`). Offload moves
the fp32 master, the moments and the fp32 gradient partition (and ZeRO-3's weight partitions with
`offload_param`) to host memory. QLoRA's packed 4-bit weights take half a byte per element plus their
quantisation constants (one fp32 per 64; with double quantisation one byte per 64 plus one fp32 per 16,384).
4-bit loading also leaves the checkpoint file mapped, the pages it quantised from resident (clean page cache,
measured: the whole file): host memory, which on the CPU is the ranks' own.

Two transients come on top, each at a moment when the activations are already freed, so a rank peaks at the
largest of the three (`trainer.plan.estimate`): torch's AdamW makes two temporaries the size of each tensor it
steps (the flat fp32 partition under ZeRO, the largest trained tensor without), and without ZeRO DeepSpeed's
gradient all-reduce flattens the gradients into buckets of up to 5e8 elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.plan.model_shape import ParameterCounts

FP32 = 4
BLOCK = 64
ALLREDUCE_BUCKET = 500_000_000  # deepspeed.runtime.engine.MEMORY_OPT_ALLREDUCE_SIZE
ADAM_TEMPORARIES = 2


@dataclass(frozen=True)
class Layout:
    stage: int
    ranks: int
    weight_bytes: int
    low_precision: bool
    offload_optimizer: bool
    offload_param: bool
    reduce_bucket: int
    overlap_comm: bool
    prefetch_bucket: int
    max_live: int
    four_bit: bool
    double_quant: bool
    touched_only: bool


def layout_from(resolved: dict[str, Any], ranks: int, weight_bytes: int, quant, touched_only: bool) -> Layout:
    zero = resolved.get("zero_optimization", {})
    offloaded = lambda key: (zero.get(key) or {}).get("device", "none") not in ("none", None)  # noqa: E731
    return Layout(
        stage=zero.get("stage", 0),
        ranks=ranks,
        weight_bytes=weight_bytes,
        low_precision=any(resolved.get(key, {}).get("enabled") for key in ("bf16", "fp16")),
        offload_optimizer=offloaded("offload_optimizer"),
        offload_param=offloaded("offload_param"),
        reduce_bucket=int(zero.get("reduce_bucket_size", 5e8)),
        overlap_comm=bool(zero.get("overlap_comm", zero.get("stage", 0) == 3)),
        prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size", 5e7)),
        max_live=int(zero.get("stage3_max_live_parameters", 1e9)),
        four_bit=quant.load_in_4bit,
        double_quant=quant.double_quant,
        touched_only=touched_only,
    )


def four_bit_bytes(elements: int, double_quant: bool) -> float:
    constants = (1 / BLOCK + FP32 / (BLOCK * 256)) if double_quant else FP32 / BLOCK
    return elements * (0.5 + constants)


def weight_bytes(counts: ParameterCounts, layout: Layout) -> float:
    d = layout.weight_bytes
    if layout.four_bit:
        frozen = (counts.frozen - counts.quantizable) * d + four_bit_bytes(counts.quantizable, layout.double_quant)
    else:
        frozen = counts.frozen * d
    return frozen + counts.trainable * d


def bucket_bytes(buckets: int, size: int, trained: int, layout: Layout) -> float:
    capacity = buckets * size
    return (min(capacity, trained) if layout.touched_only else capacity) * layout.weight_bytes


def model_states(counts: ParameterCounts, layout: Layout) -> dict[str, dict[str, float]]:
    """{"device": {term: bytes}, "host": {term: bytes}} per rank."""
    trained, ranks, stage, d = counts.trainable, layout.ranks, layout.stage, layout.weight_bytes
    weights = weight_bytes(counts, layout)
    device: dict[str, float] = {}
    host: dict[str, float] = {}
    if stage == 0 and not layout.low_precision:
        device.update(weights=weights, gradients=trained * d, optimizer=2 * trained * d)
        return {"device": device, "host": host}
    partitioned = {"master": FP32 * trained / ranks, "optimizer": 2 * FP32 * trained / ranks}
    gradients = FP32 * trained / ranks if stage >= 2 else FP32 * trained
    buckets = 2 if layout.overlap_comm else 1
    if stage == 3:
        gathered = min(layout.max_live, counts.trainable + counts.frozen) * d
        (host if layout.offload_param else device)["weights"] = weights / ranks
        device["gathered_weights"] = gathered
        device["buffers"] = bucket_bytes(buckets, layout.reduce_bucket, trained, layout) + bucket_bytes(
            1, layout.prefetch_bucket, counts.trainable + counts.frozen, layout
        )
    else:
        device["weights"] = weights
        device["buffers"] = bucket_bytes(buckets, layout.reduce_bucket, trained, layout) if stage else 0.0
    if layout.four_bit:
        (device if layout.touched_only else host)["mapped_checkpoint"] = (counts.trainable + counts.frozen) * d
    offloaded = host if layout.offload_optimizer else device
    offloaded.update(partitioned)
    (offloaded if stage >= 2 else device)["gradients"] = gradients
    return {"device": device, "host": host}


def transients(counts: ParameterCounts, layout: Layout) -> dict[str, float]:
    """Short-lived memory outside the forward and backward (see the module's docstring), bytes per rank."""
    trained, stage = counts.trainable, layout.stage
    flat = stage > 0 or layout.low_precision
    stepped = FP32 * trained / layout.ranks if flat else layout.weight_bytes * counts.largest_trainable
    step = 0.0 if layout.offload_optimizer else ADAM_TEMPORARIES * stepped
    reduction = min(trained, ALLREDUCE_BUCKET) * layout.weight_bytes if stage == 0 and layout.ranks > 1 else 0.0
    return {"optimizer step temporaries": step, "gradient all-reduce copy": reduction}
