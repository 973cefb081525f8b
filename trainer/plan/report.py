"""The plan as a markdown table (rows: memory terms; columns: without and with gradient checkpointing) or JSON."""

from __future__ import annotations

from typing import Any

from trainer.plan.estimate import GIB, Plan

NAMES = {
    "weights": "weights",
    "gathered_weights": "gathered weights (ZeRO-3 working set)",
    "gradients": "gradients",
    "master": "fp32 master weights",
    "optimizer": "Adam moments",
    "buffers": "communication buffers",
    "mapped_checkpoint": "checkpoint file mapped by 4-bit loading",
}


def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def describe(plan: Plan) -> list[str]:
    layout, counts, tokens = plan.layout, plan.counts, plan.tokens
    total = counts.trainable + counts.frozen
    offload = " + optimizer offload" if layout.offload_optimizer else ""
    quant = ", 4-bit base" if layout.four_bit else ""
    lines = [
        f"{layout.ranks} data-parallel ranks, ZeRO-{layout.stage}{offload}{quant}, "
        f"{layout.weight_bytes}-byte weights, micro batch {plan.micro_batch}",
        f"parameters: {total / 1e9:.3f} B ({counts.trainable / 1e6:.1f} M trained, {counts.frozen / 1e6:.1f} M frozen)",
        f"tokens per row: {plan.row_tokens:,}, {plan.row_supervised:,} supervised "
        f"(from {tokens.source}: longest {tokens.longest:,}, "
        f"p95 {tokens.p95:,.0f}, mean {tokens.mean:,.0f}, image tokens up to {tokens.image_tokens_max:,}"
        + (f"; {tokens.dropped} longer than model.max_length, dropped" if tokens.dropped else "")
        + ")",
    ]
    return lines


def markdown(plan: Plan) -> str:
    rows = [(NAMES[name], value, value) for name, value in plan.states["device"].items()]
    batch = plan.micro_batch
    activations = [batch * plan.activations_per_sample[checkpointing] for checkpointing in (False, True)]
    rows.append((f"activations (micro batch {batch})", *activations))
    rows += [(f"{name} (instead of activations, if larger)", v, v) for name, v in plan.transients.items() if v]
    rows.append(("runtime (context, kernels, communication library)", plan.runtime, plan.runtime))
    lines = [*describe(plan), "", "| per rank, GiB | no checkpointing | gradient checkpointing |", "|---|---:|---:|"]
    lines += [f"| {name} | {gib(a)} | {gib(b)} |" for name, a, b in rows]
    lines.append(f"| **total** | **{gib(plan.per_rank(False))}** | **{gib(plan.per_rank(True))}** |")
    if plan.device_bytes is not None:
        fits = ["yes" if plan.fits(c) else "no" for c in (False, True)]
        largest = [str(plan.largest_micro_batch(c)) for c in (False, True)]
        lines.append(f"| fits in {gib(plan.device_bytes)} GiB | {fits[0]} | {fits[1]} |")
        lines.append(f"| largest micro batch that fits | {largest[0]} | {largest[1]} |")
    host = plan.states["host"]
    if host:
        terms = ", ".join(f"{NAMES[name]} {gib(value)}" for name, value in host.items())
        lines += ["", f"host memory per rank (offloaded): {gib(sum(host.values()))} GiB ({terms})"]
    configured = "with" if plan.checkpointing else "without"
    lines += ["", f"the config trains {configured} gradient checkpointing (model.gradient_checkpointing)"]
    return "\n".join(lines) + "\n"


def as_json(plan: Plan) -> dict[str, Any]:
    by_checkpointing = {name: plan.per_rank(c) / GIB for name, c in (("off", False), ("on", True))}
    return {
        "per_rank_gib": plan.per_rank(plan.checkpointing) / GIB,
        "fits": plan.fits(plan.checkpointing),
        "largest_micro_batch": plan.largest_micro_batch(plan.checkpointing),
        "gradient_checkpointing": plan.checkpointing,
        "per_rank_gib_by_checkpointing": by_checkpointing,
        "largest_micro_batch_by_checkpointing": {
            name: plan.largest_micro_batch(c) for name, c in (("off", False), ("on", True))
        },
        "device_gib": None if plan.device_bytes is None else plan.device_bytes / GIB,
        "terms_gib": {name: value / GIB for name, value in plan.states["device"].items()},
        "transients_gib": {name: value / GIB for name, value in plan.transients.items()},
        "host_gib": {name: value / GIB for name, value in plan.states["host"].items()},
        "activations_per_sample_gib": {
            name: plan.activations_per_sample[c] / GIB for name, c in (("off", False), ("on", True))
        },
        "runtime_gib": plan.runtime / GIB,
        "ranks": plan.layout.ranks,
        "zero_stage": plan.layout.stage,
        "micro_batch": plan.micro_batch,
        "row_tokens": plan.row_tokens,
        "row_supervised_tokens": plan.row_supervised,
        "parameters": {"trainable": plan.counts.trainable, "frozen": plan.counts.frozen},
        "tokens": vars(plan.tokens),
    }
