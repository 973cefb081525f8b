"""What feeds the loop: the run's collator and a shard loader per split, and the optimizer steps they make."""

from __future__ import annotations

import logging

from data_shards.stream import ShardLoader, ShardStream, StreamConfig
from data_shards.stream.deal import Deal, Schedule
from data_shards.stream.mix import MixStream, open_split
from trainer.batches.choice import ChoiceCollator, choice_token_ids
from trainer.batches.collate import Collator, build_collator
from trainer.chat.answers import TemplateError
from trainer.chat.template import use_chat_template
from trainer.config import deepspeed_json
from trainer.config.fields import ConfigError
from trainer.config.schema import TrainConfig
from trainer.distributed.world import WorldInfo
from trainer.evaluate.generation import EvalCollator
from trainer.models.families.rules import packing_problem
from trainer.train.objectives import ChoiceLoss, LanguageModelLoss

log = logging.getLogger("shardtune")


def make_collator(processor, model, config: TrainConfig, world_size: int = 1) -> Collator:
    """The run's collator. Micro-batches without images carry a blank one (`trainer.batches.blank_image`) with
    several ranks, and under ZeRO-3 on one rank too: there a micro-step that leaves the projector without a
    gradient corrupts the accumulated update (measured: losses off from the fifth step with gradient accumulation 2)."""
    problem = packing_problem(model.config.model_type) if config.data.packing else None
    if problem:
        raise ConfigError([f"data.packing: {problem}"])
    blank = world_size > 1 or deepspeed_json.zero_stage(config) == 3
    source = use_chat_template(processor, config.model.path, config.model.chat_template)
    try:
        return build_collator(
            processor,
            model,
            config.model.max_length,
            source,
            packing=config.data.packing,
            supervise=config.data.supervise,
            blank_image=blank,
        )
    except TemplateError as error:
        raise ConfigError([f"model.chat_template: {error}"]) from None


def make_objective(config: TrainConfig, collator: Collator):
    """(objective, training collate, evaluation collate) for `train.objective`."""
    if config.train.objective == "lm":
        return LanguageModelLoss(), collator, EvalCollator(collator)
    choices = config.data.choices
    try:
        choice_ids = choice_token_ids(collator, choices)
    except ValueError as error:
        raise ConfigError([str(error)]) from None
    swap = config.data.swap_choices if config.train.swap_consistency > 0 else None
    order = [choices.index(answer) for answer in swap] if swap else None
    objective = ChoiceLoss(choice_ids, order, config.train.swap_consistency)
    return objective, ChoiceCollator(collator, choices, swap), ChoiceCollator(collator, choices, swap)


def make_loader(config: TrainConfig, world: WorldInfo, source: str, collate, shuffle: bool) -> ShardLoader:
    """The training loader (`shuffle`, a `data.sample_fraction` subset) or an evaluation one (every sample)."""
    data, micro_batch = config.data, config.train.micro_batch_size
    stream_config = StreamConfig(
        batch_size=micro_batch if shuffle else config.eval.batch_size or micro_batch,
        seed=config.train.seed,
        shuffle=shuffle,
        block_shards=data.block_shards,
        on_corrupt=data.on_corrupt,
        sample_fraction=data.sample_fraction if shuffle else 1.0,
        accumulation=config.train.grad_accum if shuffle else 1,
        width=data.strips_per_batch if shuffle else 1,
        cache_dir=data.cache_dir,
        cache_gb=data.cache_gb,
    )
    stream = open_split(
        source, index=data.index or None, config=stream_config, rank=world.rank, world_size=world.world_size
    )
    if isinstance(stream, MixStream):
        log.info(stream.describe())
    if stream_config.sample_fraction < 1:  # INFO reaches the console on rank 0 only (the trainer's logging)
        log.info(
            "data.sample_fraction=%g: %d of %d training samples",
            data.sample_fraction,
            stream.epoch_samples,
            stream.num_samples,
        )
    return ShardLoader(stream, num_workers=data.num_workers, collate_fn=collate)


def planned_steps(config: TrainConfig, stream: ShardStream | MixStream) -> int:
    """`train.max_steps`, or the optimizer steps of `train.epochs` whole epochs (equal on every rank); an epoch is
    a pass over the `data.sample_fraction` subset."""
    if config.train.max_steps:
        return config.train.max_steps
    whole_epoch = Deal.whole(stream.epoch_samples, stream.reader_count, stream.config.remainder)
    c = stream.config
    micro_batches = Schedule(whole_epoch, stream.rank, c.accumulation, c.batch_size, c.width)
    return max(1, config.train.epochs * micro_batches.total_batches // config.train.grad_accum)
