"""`shardtune-plan --config C --gpus-per-node G --gpu-memory-gib M [--nodes N] [section.key=value ...]`

Per-rank memory of a training config before anything is loaded: the model is built on the meta device from its
config (any model transformers can build; no weights are read), the data's token lengths come from collating
the first `--samples` of `data.train` with the model's processor (or `--tokens`), and the ZeRO stage, offload and
buckets from the resolved DeepSpeed JSON. Prints a table (or `--json`: `per_rank_gib`, `fits`,
`largest_micro_batch`, ...). Exit code 0 when the configured run fits, 3 when it does not, 2 on a config error.
How the terms are counted: `trainer/plan/states.py` and `trainer/plan/activations.py`; how they compare with
measured peaks: bench/RESULTS.md ("Memory planner").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.config import presets
from trainer.config.schema import ConfigError, load

DOES_NOT_FIT = 3


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="shardtune-plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument("--config", type=Path, required=True, help="YAML recipe (see configs/)")
    root.add_argument("--preset", metavar="NAME|PATH", help="defaults under the recipe (as for training)")
    root.add_argument("--gpus-per-node", type=int, default=1, help="ranks per node")
    root.add_argument("--nodes", type=int, default=1)
    root.add_argument("--gpu-memory-gib", type=float, help="memory per device; gives `fits` and the largest batch")
    root.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="what the ranks run on")
    root.add_argument("--tokens", type=int, help="tokens per sample instead of measuring data.train")
    root.add_argument("--supervised", type=int, help="with --tokens: supervised tokens per sample (default: all)")
    root.add_argument("--samples", type=int, default=256, help="samples of data.train collated to measure lengths")
    root.add_argument("--json", action="store_true", help="print JSON instead of the table")
    root.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.micro_batch_size=4")
    return root


def token_lengths(config, model, samples: int, tokens: int | None, supervised: int | None):
    from trainer.models.processor import load_processor
    from trainer.plan import tokens as lengths

    if tokens is not None:
        return lengths.given(tokens, supervised)
    if not Path(config.data.train).exists():
        raise ConfigError([f"data.train: {config.data.train} does not exist (build the shards, or pass --tokens N)"])
    return lengths.measure(config, model, load_processor(config.model.path), samples)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    overrides = list(args.overrides) + ([f"{presets.KEY}={args.preset}"] if args.preset else [])
    try:
        config = load(args.config, overrides)
        if args.gpus_per_node < 1 or args.nodes < 1:
            raise ConfigError(["--gpus-per-node and --nodes must be >= 1"])
        from trainer.plan.estimate import GIB, plan
        from trainer.plan.model_shape import meta_model
        from trainer.plan.report import as_json, markdown

        model_and_parts = meta_model(config)
        tokens = token_lengths(config, model_and_parts[0], args.samples, args.tokens, args.supervised)
        device_bytes = None if args.gpu_memory_gib is None else args.gpu_memory_gib * GIB
        result = plan(config, args.nodes * args.gpus_per_node, tokens, args.device, device_bytes, model_and_parts)
    except (ConfigError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(as_json(result), indent=1) if args.json else markdown(result), end="" if not args.json else "\n")
    return DOES_NOT_FIT if result.fits(result.checkpointing) is False else 0
