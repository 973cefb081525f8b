"""`launch/train.py`: parse `[--preset P] --config C [section.key=value ...]`, discover the world, train.

Layers, each over the one before: the defaults below < the preset (`--preset NAME|PATH`, a partial config from
configs/presets/; = `train.preset=P`) < the recipe (`--config`) < `section.key=value` overrides. A preset only
fills what the recipe leaves unset: to force one of its values over the recipe, pass it as an override.

Works under `deepspeed launch/train.py`, `torchrun --nproc_per_node N launch/train.py` and plain
`python launch/train.py` (a single process); `--local_rank` from older launchers is accepted. Options and
overrides may come in any order. Every path is checked (`trainer.train.preflight`) before the model loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from trainer.config import presets
from trainer.config.schema import ConfigError, help_text, load
from trainer.distributed.world import world_from_env
from trainer.train.callbacks import load_callbacks


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="launch/train.py",
        description=__doc__,
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    root.add_argument(
        "--preset",
        metavar="NAME|PATH",
        help=f"defaults under the recipe: {', '.join(presets.available())} or a YAML path (= train.preset=...)",
    )
    root.add_argument("--resume", help="shortcut for checkpoint.resume=auto|none|RUN:best|RUN:latest|PATH")
    root.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    root.add_argument("overrides", nargs="*", help="section.key=value, e.g. optimizer.lr=2e-5")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)  # `--config C a.b=1 --resume auto c.d=2` too
    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    overrides += [f"{presets.KEY}={args.preset}"] if args.preset else []
    from trainer.train.audit import audit_callbacks  # these two import torch: not for --help
    from trainer.train.preflight import preflight

    try:
        config = load(args.config, overrides)
        world = world_from_env()
        preflight(config)  # on every rank, before any collective: each fails alike, with exit code 2
        callbacks = load_callbacks(config.train.callbacks) + audit_callbacks(config.train)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return train(config, world, callbacks)


def train(config, world, callbacks) -> int:
    """One run inside its process group and signal handlers, both undone on the way out, however it ends."""
    from trainer.distributed.process_group import process_group
    from trainer.distributed.signals import PREEMPTED_EXIT_CODE, Preempted, StopRequest
    from trainer.train.trainer import Trainer

    stop = StopRequest()
    try:
        with process_group(world) as device, stop:
            summary = Trainer(config, world, device, stop, callbacks).fit()
    except ConfigError as error:  # found once the model and its processor are loaded (e.g. its chat template)
        print(f"[rank {world.rank}] error: {error}", file=sys.stderr, flush=True)
        return 2
    except Preempted as preempted:
        print(f"[rank {world.rank}] {preempted}", file=sys.stderr, flush=True)
        stop.forward(preempted.signum)
        return PREEMPTED_EXIT_CODE
    except Exception:
        print(f"[rank {world.rank}] training failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        logging.shutdown()
        return 1
    if world.is_main:
        print(json.dumps(summary))
    return 0
