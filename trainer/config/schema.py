"""The one training configuration: every key typed, documented and defaulted; YAML and `a.b=c` override it.

`python launch/train.py --help` prints every key. Cross-field rules live in `TrainConfig.problems()`. A preset
(`train.preset`, `trainer.config.presets`) is layered under the YAML: defaults ← preset ← YAML ← overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.config import presets
from trainer.config.fields import ConfigError, check_config, describe, option, read_values, to_dict, walk_fields

DTYPE_NAMES = ("float32", "bfloat16", "float16")
OBJECTIVES = ("lm", "choice")
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")
SCHEDULES = ("cosine", "linear", "constant")
WANDB_MODES = ("disabled", "offline", "online")


@dataclass
class ModelSection:
    path: str = option("", help="local model folder or hub id (AutoModelForImageTextToText)")
    dtype: str = option("float32", help="weights and compute dtype", choices=DTYPE_NAMES)
    attention: str = option(
        "auto", help="auto = flash_attention_2 when importable on CUDA, else sdpa, else eager", choices=ATTENTION
    )
    gradient_checkpointing: bool = option(False, help="recompute activations in backward (works with a frozen tower)")
    freeze_vision_tower: bool = option(True, help="keep the vision encoder frozen")
    freeze_projector: bool = option(False, help="keep the multimodal projector frozen")
    freeze_language_model: bool = option(
        False, help="keep the language model frozen (implied by LoRA for base weights)"
    )
    max_length: int = option(2048, help="longest token sequence; longer samples are dropped and counted, never cut")
    chat_template: str = option("", help="a Jinja file used instead of the model's chat template (empty: the model's)")


@dataclass
class DataSection:
    train: str = option(
        "",
        help="training shards: a split folder, a brace pattern or pipe: URLs; or a weighted mix of such, "
        "`A:0.7,B:0.3` (an epoch as long as the splits together, each filling its weight's share)",
    )
    val: str = option("", help="validation shards (empty: no evaluation)")
    index: str = option("", help="index.json for brace/pipe sources (a folder finds its own)")
    num_workers: int = option(2, help="DataLoader worker processes per rank")
    block_shards: int = option(8, help="shards shuffled together (the shuffle buffer, in shards)")
    on_corrupt: str = option(
        "skip", help="a damaged shard or sample is skipped and counted, or stops the run", choices=("skip", "fail")
    )
    strips_per_batch: int = option(
        1,
        help="readers (contiguous strips of the epoch's order) each training micro-batch draws from; a step's samples "
        "depend on ranks × grad_accum × this and the batch per strip, so micro_batch_size 8 with 2 trains as 4 with "
        "grad_accum 2; = micro_batch_size makes them depend on the global batch only (a block of shards in flight "
        "per sample of it)",
    )
    cache_dir: str = option(
        "", help="node-local cache of remote (pipe:, http) shards; empty: $SHARDTUNE_CACHE or the temp directory's"
    )
    cache_gb: float = option(64.0, help="cache size limit; least recently used shard copies are dropped beyond it")
    packing: bool = option(False, help="pack several samples per sequence (models that support it)")
    supervise: str = option(
        "all",
        help="assistant turns trained on: every one, or only the last of each conversation",
        choices=("all", "last"),
    )
    sample_fraction: float = option(
        1.0,
        help="train on a seeded subset of data.train, round(f × samples) of them (0 < f <= 1): train.seed picks "
        "it, the same on every rank and in every epoch; data.val is read whole",
    )
    choices: list[str] = option(factory=list, help="the closed answer set of train.objective=choice, e.g. [A, B]")
    swap_choices: list[str] = option(
        factory=list,
        help="what each of data.choices becomes when a sample's two images are swapped (train.swap_consistency), "
        "e.g. [Second, First, Similar] for [First, Second, Similar]",
    )


@dataclass
class TrainSection:
    preset: str = option(
        "",
        help=f"defaults layered under the recipe (preset < YAML < overrides): {', '.join(presets.available())} "
        "(configs/presets/) or a YAML file's path; kept in the resolved config",
    )
    output_dir: str = option("runs/train", help="run folder: checkpoints, metrics.jsonl, resolved config")
    micro_batch_size: int = option(1, help="samples per rank per forward pass")
    grad_accum: int = option(1, help="micro batches per optimizer step")
    global_batch_size: int = option(0, help="if set, must equal micro_batch_size × grad_accum × world size")
    max_steps: int = option(0, help="optimizer steps (0: run `epochs` epochs)")
    epochs: int = option(1, help="passes over the training split when max_steps is 0")
    seed: int = option(0, help="seed for data order, initialisation and dropout")
    precision: str = option(
        "fp32", help="fp32, bf16 or fp16 (DeepSpeed mixed precision)", choices=("fp32", "bf16", "fp16")
    )
    max_grad_norm: float = option(1.0, help="gradient clipping (0: off)")
    max_bad_steps: int = option(
        3,
        help="consecutive optimizer steps skipped for a NaN/Inf loss before the run aborts "
        "(the last good checkpoint stays)",
    )
    log_every: int = option(1, help="steps between metric lines")
    objective: str = option(
        "lm",
        help="lm: next-token loss on the answers; choice: cross-entropy over data.choices' logits at the answer "
        "position (no answer text in the input)",
        choices=OBJECTIVES,
    )
    swap_consistency: float = option(
        0.0,
        help="choice objective on image pairs: also train each pair swapped, adding λ × symmetric KL between "
        "p(·|a,b) and the mirrored p(·|b,a) (0: off)",
    )
    callbacks: list[str] = option(
        factory=list,
        help="`module:Class` training-loop callbacks (trainer.train.callbacks), each built without arguments",
    )
    audit_every: int = option(
        0,
        help="gradient audit (trainer.train.audit): every N steps a per-parameter table and gradient-flow plot "
        "in {output_dir}/audit/, warnings and health/* counts on every step (0: off)",
    )
    grad_warn_above: float = option(1e3, help="audit: warn when the global gradient norm is above this")
    grad_warn_below: float = option(1e-8, help="audit: warn when the global gradient norm is below this")
    loss_spike_factor: float = option(
        5.0, help="audit: warn when a step's loss exceeds this × the median of the last 50 steps (0: off)"
    )


@dataclass
class OptimizerSection:
    lr: float = option(2e-4, help="learning rate of the language model / LoRA weights")
    projector_lr: float = option(0.0, help="projector learning rate (0: same as lr)")
    vision_lr: float = option(0.0, help="vision tower learning rate when unfrozen (0: same as lr)")
    weight_decay: float = option(0.0, help="decoupled weight decay (never on biases and norms)")
    betas: list[float] = option(factory=lambda: [0.9, 0.999], help="AdamW betas")
    eps: float = option(1e-8, help="AdamW epsilon")
    schedule: str = option("cosine", help="learning-rate schedule after warmup", choices=SCHEDULES)
    warmup_steps: int = option(0, help="linear warmup steps")
    min_lr_ratio: float = option(0.0, help="final learning rate as a fraction of the peak")


@dataclass
class LoraSection:
    enabled: bool = option(False, help="train LoRA adapters instead of full weights")
    r: int = option(8, help="LoRA rank")
    alpha: int = option(16, help="LoRA alpha")
    dropout: float = option(0.0, help="LoRA dropout")
    target_modules: list[str] = option(
        factory=list, help="Linear module names to adapt (empty: every Linear of the language model)"
    )


@dataclass
class QuantSection:
    load_in_4bit: bool = option(
        False, help="QLoRA: bitsandbytes 4-bit base weights (vision tower and projector stay unquantised)"
    )
    quant_type: str = option("nf4", help="4-bit data type", choices=("nf4", "fp4"))
    double_quant: bool = option(True, help="quantise the quantisation constants too")


@dataclass
class DeepSpeedSection:
    config: str = option(
        "configs/deepspeed/zero2.json", help="DeepSpeed JSON; 'auto' fields are filled from this config"
    )
    zero_stage: int = option(-1, help="override the JSON's ZeRO stage (-1: keep)", choices=(-1, 0, 1, 2, 3))
    offload: bool = option(False, help="offload optimizer state (and ZeRO-3 parameters) to CPU")


@dataclass
class CheckpointSection:
    every_steps: int = option(0, help="steps between checkpoints (0: only at the end)")
    keep_last: int = option(2, help="checkpoints kept besides the best")
    best_metric: str = option("", help="eval metric that picks the best checkpoint (empty: none)")
    best_mode: str = option("min", help="whether lower or higher is better", choices=("min", "max"))
    resume: str = option(
        "auto", help="auto (latest in output_dir, if any), none, a checkpoint path, or RUN:best / RUN:latest"
    )


@dataclass
class TrackingSection:
    wandb: str = option("disabled", help="Weights & Biases mode", choices=WANDB_MODES)
    project: str = option("shardtune", help="W&B project")
    group: str = option("", help="W&B group (a sweep, a k-fold run)")
    name: str = option("", help="W&B run name (default: the output folder name)")
    tags: list[str] = option(factory=list, help="W&B tags")
    api_key: str = option("", help="W&B API key (prefer the WANDB_API_KEY environment variable)", secret=True)


@dataclass
class EvalSection:
    every_steps: int = option(0, help="steps between evaluations on data.val (0: only at the end)")
    max_batches: int = option(0, help="limit evaluation batches (0: the whole split)")
    batch_size: int = option(
        0, help="samples per rank per evaluation batch (0: train.micro_batch_size); no gradients, so it can be larger"
    )
    max_new_tokens: int = option(8, help="tokens generated per answer for exact-match accuracy")
    at_start: bool = option(False, help="also evaluate before the first step (accuracy before training)")


@dataclass
class TrainConfig:
    model: ModelSection = option(factory=ModelSection)
    data: DataSection = option(factory=DataSection)
    train: TrainSection = option(factory=TrainSection)
    optimizer: OptimizerSection = option(factory=OptimizerSection)
    lora: LoraSection = option(factory=LoraSection)
    quant: QuantSection = option(factory=QuantSection)
    deepspeed: DeepSpeedSection = option(factory=DeepSpeedSection)
    checkpoint: CheckpointSection = option(factory=CheckpointSection)
    tracking: TrackingSection = option(factory=TrackingSection)
    eval: EvalSection = option(factory=EvalSection)

    def problems(self) -> list[str]:
        found = []
        if not self.model.path:
            found.append("model.path: required (a model folder or a hub id)")
        if not self.data.train:
            found.append("data.train: required (a shard folder such as shards/train)")
        if self.quant.load_in_4bit and not self.lora.enabled:
            found.append("quant.load_in_4bit: 4-bit weights cannot be trained directly; set lora.enabled=true (QLoRA)")
        for key, value in (
            ("train.micro_batch_size", self.train.micro_batch_size),
            ("train.grad_accum", self.train.grad_accum),
            ("lora.r", self.lora.r),
            ("train.log_every", self.train.log_every),
        ):
            if value < 1:
                found.append(f"{key}: must be >= 1, got {value}")
        if self.train.max_steps < 0 or self.train.epochs < 1 and self.train.max_steps == 0:
            found.append("train.max_steps / train.epochs: set max_steps > 0 or epochs >= 1")
        if self.eval.batch_size < 0:
            found.append(f"eval.batch_size: must be >= 0 (0: train.micro_batch_size), got {self.eval.batch_size}")
        if not 0 < self.data.sample_fraction <= 1:
            found.append(f"data.sample_fraction: must be in (0, 1], got {self.data.sample_fraction}")
        if self.data.strips_per_batch < 1 or self.train.micro_batch_size % self.data.strips_per_batch:
            found.append(
                f"data.strips_per_batch: must divide train.micro_batch_size ({self.train.micro_batch_size}), "
                f"got {self.data.strips_per_batch}"
            )
        if self.data.cache_gb <= 0:
            found.append(f"data.cache_gb: must be positive, got {self.data.cache_gb}")
        if self.optimizer.lr <= 0:
            found.append(f"optimizer.lr: must be positive, got {self.optimizer.lr}")
        half = {"bf16": "bfloat16", "fp16": "float16"}.get(self.train.precision)
        if self.quant.load_in_4bit and half and self.model.dtype != half:
            found.append(
                f"quant.load_in_4bit with train.precision={self.train.precision}: set model.dtype={half} "
                "(DeepSpeed casts the module, which would corrupt 4-bit weights stored as "
                f"{self.model.dtype})"
            )
        if self.train.precision == "fp16" and self.model.dtype == "bfloat16":
            found.append("train.precision=fp16 with model.dtype=bfloat16: pick one half-precision type")
        return found + self.objective_problems()

    def objective_problems(self) -> list[str]:
        choices, swapped, weight = self.data.choices, self.data.swap_choices, self.train.swap_consistency
        found = []
        if self.train.objective == "choice" and (len(choices) < 2 or len(set(choices)) != len(choices)):
            found.append(f"data.choices: train.objective=choice needs two or more distinct answers, got {choices}")
        if self.train.objective == "choice" and self.data.packing:
            found.append("data.packing: not with train.objective=choice (one prompt per row)")
        if weight < 0:
            found.append(f"train.swap_consistency: must be >= 0, got {weight}")
        if weight > 0 and self.train.objective != "choice":
            found.append("train.swap_consistency: needs train.objective=choice")
        mirror = dict(zip(choices, swapped))
        involution = all(mirror.get(mirror[c]) == c for c in mirror)
        if weight > 0 and (len(swapped) != len(choices) or sorted(swapped) != sorted(choices) or not involution):
            found.append(
                f"data.swap_choices: must pair up data.choices {choices} (swapping twice gives each back), "
                f"got {swapped}"
            )
        return found


def load(yaml_path: Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults ← the preset named by `train.preset` (in the YAML or an override) ← YAML ← overrides, checked."""
    values, problems = read_values(yaml_path, overrides)
    preset = values.get(presets.KEY)
    if preset and isinstance(preset, str):  # any other value is refused by check_config, naming the key
        values = {**presets.preset_values(preset, {key for key, _, _ in walk_fields(TrainConfig)}), **values}
    return check_config(TrainConfig, values, problems)


def help_text() -> str:
    return "configuration keys (set in YAML or as section.key=value):\n" + describe(TrainConfig)


__all__ = ["ConfigError", "TrainConfig", "help_text", "load", "to_dict"]
