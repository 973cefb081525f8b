"""DeepSpeed JSON with "auto" fields filled from the training config: one source of truth for batch sizes.

A user's own JSON is accepted; explicit values that contradict the training config are refused
with both numbers in the message, and any "auto" we cannot fill is named.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from trainer.config.fields import ConfigError
from trainer.config.schema import TrainConfig


def global_batch_size(config: TrainConfig, world_size: int) -> int:
    """micro × accumulation × world; a requested global size must match it exactly."""
    micro, accum = config.train.micro_batch_size, config.train.grad_accum
    product = micro * accum * world_size
    wanted = config.train.global_batch_size
    if wanted and wanted != product:
        raise ConfigError(
            [
                f"train.global_batch_size={wanted} but micro_batch_size {micro} × grad_accum {accum} × world size "
                f"{world_size} = {product}"
                + (
                    f"; grad_accum={wanted // (micro * world_size)} would fit"
                    if wanted % (micro * world_size) == 0
                    else f"; {wanted} is not divisible by micro_batch_size × world size = {micro * world_size}"
                )
            ]
        )
    return product


def load_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"deepspeed.config: {path} does not exist"]) from None
    except json.JSONDecodeError as error:
        raise ConfigError([f"deepspeed.config: {path} is not valid JSON (line {error.lineno}: {error.msg})"]) from None


def zero_stage(config: TrainConfig) -> int:
    """The ZeRO stage the run will use: `deepspeed.zero_stage` when set, else the JSON's."""
    if config.deepspeed.zero_stage >= 0:
        return config.deepspeed.zero_stage
    return load_json(config.deepspeed.config).get("zero_optimization", {}).get("stage", 0)


def resolve(config: TrainConfig, world_size: int, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict to pass to deepspeed.initialize."""
    ds = copy.deepcopy(load_json(config.deepspeed.config))
    wanted = {
        "train_micro_batch_size_per_gpu": config.train.micro_batch_size,
        "gradient_accumulation_steps": config.train.grad_accum,
        "train_batch_size": global_batch_size(config, world_size),
        "gradient_clipping": config.train.max_grad_norm,
    }
    problems = [fill(ds, key, value) for key, value in wanted.items()]
    for section, enabled in (("bf16", config.train.precision == "bf16"), ("fp16", config.train.precision == "fp16")):
        ds.setdefault(section, {})
        problems.append(fill(ds[section], "enabled", enabled, f"{section}.enabled"))
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if config.deepspeed.zero_stage >= 0:
        zero["stage"] = config.deepspeed.zero_stage
    if config.deepspeed.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero["stage"] == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    fill_zero_buckets(zero, hidden_size)
    problems += disabled_overflow_checks(ds)
    problems += [f'deepspeed.config: {key} is still "auto" (shardtune cannot fill it)' for key in auto_keys(ds)]
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(problems)
    return ds


def fill(section: dict[str, Any], key: str, value: Any, name: str | None = None) -> str | None:
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
        return None
    if current != value:
        return (
            f'deepspeed.config: {name or key}={current!r} contradicts the training config ({value!r}); set it to "auto"'
        )
    return None


def fill_zero_buckets(zero: dict[str, Any], hidden: int) -> None:
    sizes = {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value


def auto_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            found.append(f"{prefix}{key}")
    return found


def disabled_overflow_checks(ds: dict[str, Any]) -> list[str]:
    """DeepSpeed skips a step with non-finite gradients (after a NaN/Inf loss) only with these checks on."""
    switches = {
        "bf16.check_grad_overflow": ds.get("bf16", {}).get("check_grad_overflow"),
        "zero_optimization.compute_grad_norm": ds.get("zero_optimization", {}).get("compute_grad_norm"),
    }
    return [
        f"deepspeed.config: {key}=false would let DeepSpeed apply NaN/Inf gradients; shardtune relies on it "
        "to skip the step after a non-finite loss (train.max_bad_steps): remove it"
        for key, value in switches.items()
        if value is False
    ]


def passes_gradients_unchecked(resolved: dict[str, Any]) -> bool:
    """ZeRO stage 0 in fp32 is the one engine that calls our optimizer without checking for NaN/Inf gradients."""
    low_precision = any(resolved.get(section, {}).get("enabled") for section in ("bf16", "fp16"))
    return resolved["zero_optimization"]["stage"] == 0 and not low_precision


def offloads_optimizer(resolved: dict[str, Any]) -> bool:
    offload = resolved.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)
