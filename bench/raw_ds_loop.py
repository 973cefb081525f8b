"""The baseline for our loop's overhead: a hand-written DeepSpeed loop, run under the deepspeed launcher.

Same recipe as `launch/train.py` (the same YAML and overrides, read by `trainer.config.schema.load`), so the
same model and LoRA setup (`prepare_model`), parameter groups, optimizer, schedule and resolved
DeepSpeed config. The batches are this rank's first `--steps` micro-batches of epoch 0, made by the
same stream and `Collator` as the trainer's. With `--feed precollated` (the baseline) they are all
collated before the timed loop; with `--feed loader` (a diagnostic) they come from the trainer's own
`ShardLoader` with its `data.num_workers` workers, so that the data pipeline's cost and the loop's
bookkeeping can be told apart. A step is timed from the end of the previous one: taking the next
batch, forward, backward and `engine.step()`, nothing else. Rank 0 writes its step times, split into
those phases (and, when precollated, the seconds each collate took) to `--out`.

    deepspeed --num_gpus 2 bench/raw_ds_loop.py --config configs/demo.yaml --steps 100 --out raw.json \
        model.path=... data.train=...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script under the launcher

import deepspeed  # noqa: E402

from data_shards.stream import ShardLoader, ShardStream, StreamConfig  # noqa: E402
from trainer.batches.collate import Batch  # noqa: E402
from trainer.config import deepspeed_json  # noqa: E402
from trainer.config.schema import TrainConfig, load  # noqa: E402
from trainer.distributed.process_group import process_group  # noqa: E402
from trainer.distributed.world import world_from_env  # noqa: E402
from trainer.evaluate.generation import dtype_of, move  # noqa: E402
from trainer.models.loading import prepare_model  # noqa: E402
from trainer.models.processor import load_processor  # noqa: E402
from trainer.train.loaders import make_collator  # noqa: E402
from trainer.train.optim import build_scheduler, make_optimizer, parameter_groups  # noqa: E402
from trainer.train.trainer import seed_everything  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, required=True, help="the trainer's YAML recipe")
    parser.add_argument("--steps", type=int, required=True, help="timed steps (one micro-batch each)")
    parser.add_argument("--out", type=Path, required=True, help="JSON with rank 0's step times")
    parser.add_argument(
        "--feed",
        choices=("precollated", "loader"),
        default="precollated",
        help="batches collated before the loop, or the trainer's ShardLoader (data.num_workers workers)",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for launch/train.py")
    return parser.parse_args(argv)


def trainer_stream(config: TrainConfig, rank: int, world_size: int) -> ShardStream:
    """This rank's stream of the training split, configured as `Trainer.make_loader` configures it."""
    data = config.data
    return ShardStream(
        data.train,
        index=data.index or None,
        rank=rank,
        world_size=world_size,
        config=StreamConfig(
            batch_size=config.train.micro_batch_size,
            seed=config.train.seed,
            shuffle=True,
            block_shards=data.block_shards,
            on_corrupt=data.on_corrupt,
        ),
    )


def precollated(stream: ShardStream, collator, steps: int) -> tuple[list[Batch], list[float]]:
    """The first `steps` batches of epoch 0, collated now; the seconds each collate took."""
    samples = list(islice(ShardLoader(stream, num_workers=0), steps))
    batches, seconds = [], []
    for batch_samples in samples:
        start = time.perf_counter()
        batches.append(collator(batch_samples))
        seconds.append(time.perf_counter() - start)
    return batches, seconds


def make_engine(model, parts, config: TrainConfig, world_size: int):
    """What `Trainer.make_engine` builds: resolved DeepSpeed JSON, parameter groups, optimizer, schedule."""
    hidden = getattr(getattr(model.config, "text_config", model.config), "hidden_size", 1024)
    resolved = deepspeed_json.resolve(config, world_size, hidden)
    groups = parameter_groups(model, parts, config)
    optimizer = make_optimizer(groups, config, resolved)
    opt = config.optimizer
    scheduler = build_scheduler(optimizer, config.train.max_steps, opt.warmup_steps, opt.schedule, opt.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=resolved)
    return engine


def timed_steps(engine, batches: Iterable[Batch], steps: int) -> dict[str, list[float]]:
    """Per step, seconds of: fetching the batch (from the end of the previous step; nothing when
    precollated), forward, backward, `engine.step()`, and their total."""
    dtype = dtype_of(engine.module)
    seconds: dict[str, list[float]] = {"fetch": [], "forward": [], "backward": [], "step": [], "total": []}
    iterator, start = iter(batches), time.perf_counter()
    for _ in range(steps):
        batch = next(iterator, None)
        if batch is None:
            raise ValueError(f"only {len(seconds['total'])} batches per rank in an epoch, fewer than --steps {steps}")
        fetched = time.perf_counter()
        loss = engine(**move(batch.inputs, engine.device, dtype), use_cache=False).loss
        forwarded = time.perf_counter()
        engine.backward(loss)
        backwarded = time.perf_counter()
        engine.step()
        end = time.perf_counter()
        for phase, value in (
            ("fetch", fetched - start),
            ("forward", forwarded - fetched),
            ("backward", backwarded - forwarded),
            ("step", end - backwarded),
            ("total", end - start),
        ):
            seconds[phase].append(value)
        start = end
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load(args.config, [*args.overrides, f"train.max_steps={args.steps}"])
    world = world_from_env()
    with process_group(world) as device:
        return run(args, config, world, device)


def run(args, config: TrainConfig, world, device) -> int:
    seed_everything(config.train.seed)
    model, parts = prepare_model(config, device)
    collator = make_collator(load_processor(config.model.path), model, config)
    stream = trainer_stream(config, world.rank, world.world_size)
    if args.feed == "precollated":
        batches, collate_seconds = precollated(stream, collator, args.steps)
    else:
        batches, collate_seconds = ShardLoader(stream, num_workers=config.data.num_workers, collate_fn=collator), []
    engine = make_engine(model, parts, config, world.world_size)
    phases = timed_steps(engine, batches, args.steps)
    if world.is_main:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "feed": args.feed,
                    "step_time_s": phases.pop("total"),
                    "phases_s": phases,
                    "collate_s": collate_seconds,
                }
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
