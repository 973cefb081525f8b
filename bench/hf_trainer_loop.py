"""The baseline for tokens/s: Hugging Face `transformers.Trainer`, padding to the longest sample of each batch.

Run under the deepspeed launcher. It trains what `launch/train.py` would train from the same recipe
(YAML + overrides): the same model and LoRA setup (`prepare_model`, same seed), AdamW with the same
learning rate, betas, warmup, schedule and clipping, and the same resolved ZeRO JSON passed as
`TrainingArguments(deepspeed=...)` (with `use_cpu=True`, without which accelerate miscounts the ranks
on CPU; see `training_arguments`). Batches come from our `Collator` (packing off: the
processor's chat template, assistant-only labels, padding to the longest) over every sample of the
split held in a map-style dataset, which HF's distributed sampler shuffles and splits across ranks.

Per step, rank 0 records when `on_step_end` fires, and every rank counts the non-pad tokens and the
token slots of the batches it trained on (summed over ranks at the end). The forward gets
`use_cache=False`, as in our trainer. Rank 0 writes the figures to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script under the launcher

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from transformers import AutoConfig, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from data_shards.sample import Sample  # noqa: E402
from data_shards.stream import ShardStream, Skipped, StreamConfig  # noqa: E402
from trainer.batches.collate import Collator  # noqa: E402
from trainer.config import deepspeed_json  # noqa: E402
from trainer.config.schema import TrainConfig, load  # noqa: E402
from trainer.distributed.world import release_shm_allreduce_buffer, world_from_env  # noqa: E402
from trainer.models.loading import prepare_model  # noqa: E402
from trainer.models.processor import load_processor  # noqa: E402
from trainer.train.loaders import make_collator  # noqa: E402
from trainer.train.trainer import seed_everything  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, required=True, help="the trainer's YAML recipe")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--out", type=Path, required=True, help="JSON with step end times and token counts")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for launch/train.py")
    return parser.parse_args(argv)


class SplitSamples(Dataset):
    """Every sample of a shard split, in stored order (images still encoded: decoded when collated)."""

    def __init__(self, source: str):
        stream = ShardStream(source, config=StreamConfig(shuffle=False, decode=False), rank=0, world_size=1)
        self.samples = [sample for sample in stream if not isinstance(sample, Skipped)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class PaddedInputs:
    """Our Collator (packing off), returning the plain dict of tensors that HF's Trainer expects."""

    def __init__(self, collator: Collator):
        self.collator = collator

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        return self.collator(samples).inputs


class CountingTrainer(Trainer):
    """Counts non-pad tokens and token slots of each micro-batch it trains on; forwards without a KV cache."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens: list[int] = []
        self.slots: list[int] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.tokens.append(int(inputs["attention_mask"].sum()))
        self.slots.append(inputs["input_ids"].numel())
        return super().compute_loss(model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)


class StepClock(TrainerCallback):
    """perf_counter() when training starts and at the end of every optimizer step."""

    def __init__(self):
        self.begin = 0.0
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def training_arguments(
    config: TrainConfig, args: argparse.Namespace, world_size: int, hidden: int
) -> TrainingArguments:
    opt, train = config.optimizer, config.train
    return TrainingArguments(
        output_dir=train.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=opt.lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.betas[0],
        adam_beta2=opt.betas[1],
        adam_epsilon=opt.eps,
        max_grad_norm=train.max_grad_norm,
        lr_scheduler_type=opt.schedule,
        warmup_steps=opt.warmup_steps,
        optim="adamw_torch",
        seed=train.seed,
        logging_steps=train.log_every,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=config.data.num_workers,
        remove_unused_columns=False,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        deepspeed=deepspeed_json.resolve(config, world_size, hidden),
        # Without use_cpu, accelerate 1.15 finds no backend on a machine without an accelerator device
        # (`PartialState._prepare_backend` names one only for GPU-like devices or for cpu=True): it runs
        # `deepspeed.init_distributed` (2 ranks) but then records `num_processes = 1`, and HF refuses the
        # JSON: "ds train_batch_size=16 vs hf train_batch_size (calculated)=8". With use_cpu the state is
        # set up on gloo with both ranks; the Trainer still runs DeepSpeed (DistributedType.DEEPSPEED,
        # a DeepSpeedEngine, checked in the output).
        use_cpu=not torch.cuda.is_available(),
    )


def hidden_size(model_path: str) -> int:
    """As `Trainer.make_engine` reads it (it sizes ZeRO buckets left "auto"), before the model is built."""
    model_config = AutoConfig.from_pretrained(model_path)
    return getattr(getattr(model_config, "text_config", model_config), "hidden_size", 1024)


def summed(values: list[int]) -> list[int]:
    """Per-step counts summed over ranks."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load(args.config, args.overrides)
    world = world_from_env()
    hf_args = training_arguments(config, args, world.world_size, hidden_size(config.model.path))
    seed_everything(config.train.seed)  # as the trainer does before building the model: the same LoRA init
    model, _ = prepare_model(config, hf_args.device)
    collator = make_collator(load_processor(config.model.path), model, config)
    clock = StepClock()
    trainer = CountingTrainer(
        model=model,
        args=hf_args,
        train_dataset=SplitSamples(config.data.train),
        data_collator=PaddedInputs(collator),
        callbacks=[clock],
    )
    trainer.train()
    release_shm_allreduce_buffer(world)  # DeepSpeed's CPU all-reduce buffer, left in /dev/shm otherwise
    tokens, slots = summed(trainer.tokens), summed(trainer.slots)
    if world.is_main:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        engine = f"{type(trainer.model_wrapped).__name__}, {trainer.accelerator.distributed_type}"
        args.out.write_text(
            json.dumps(
                {"engine": engine, "begin": clock.begin, "step_ends": clock.ends, "tokens": tokens, "slots": slots}
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
