"""`launch/evaluate.py`: a model or fine-tuned checkpoint on a shard split (or a raw dataset) → a report.

EVAL/report.json and report.md: accuracy, exact and normalised match of the greedy answer, closed-set
choice accuracy, per-class accuracy and examples of errors; confusion.csv and confusion.png;
predictions.jsonl (one line per sample).

A sample's prediction is the chosen answer when it has a closed answer set (`--choices`, or the
sample's `extra["choices"]` as pairs samples carry), else its greedy answer; `accuracy` is the
fraction of predictions that match the reference after `normalise` (as training evaluation scores).
Exact match compares the greedy answer as generated, but for surrounding whitespace. A sample's class
is its `label`, else its reference answer. `generation_in_choices` is how often the greedy answer of a
closed-set sample is one of its choices at all.

Pair samples (two images; `extra` with `items` and `score1`/`score2`) add `swap_consistency`: each closed-set
pair is scored again with its images swapped, consistent when the answer mirrors (First ↔ Second, Similar ↔
Similar); one more closed-set scoring per pair, which `--no-swap-check` saves. And `bt_pearson`,
`bt_spearman`: Bradley–Terry strengths fitted from the predictions against each item's mean true score, with
bt_strengths.csv and bt_scatter.png (see trainer/evaluate/pair_report.py).

Under torchrun every rank evaluates its slice of the split (padded to equal counts); outcomes are
gathered and de-duplicated by key, and rank 0 writes the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from data_shards.records import SourceError
from data_shards.sample import Sample
from data_shards.sources import READERS
from data_shards.stream import ShardLoader, ShardStream, StreamConfig
from trainer.batches.collate import BatchError
from trainer.distributed.process_group import process_group
from trainer.distributed.world import WorldInfo, world_from_env
from trainer.evaluate.model_source import (
    ModelSource,
    UsageError,
    add_model_arguments,
    first_line,
    load_model,
    source_from_args,
)
from trainer.evaluate.pair_report import pairwise_summary
from trainer.evaluate.pairwise import pair_record, swapped_choices
from trainer.evaluate.predict_cli import parse_choices
from trainer.evaluate.predictor import Predictor
from trainer.evaluate.report import write_report
from trainer.evaluate.scores import Outcome, confusion_matrix, error_examples, outcome, summarise

SUMMARY_KEYS = ("accuracy", "choice_accuracy", "swap_consistency", "bt_pearson", "bt_spearman", "num_samples")


@dataclass
class EvalOptions:
    batch_size: int = 8
    max_new_tokens: int = 16
    choices: list[str] | None = None
    per_token: bool = False
    limit: int = 0
    num_workers: int = 1
    swap_check: bool = True
    first_token: bool = False

    def scoring(self) -> str:
        if self.first_token:
            return "the log-probability of each answer's first token at the answer position (choice objective)"
        kind = "mean (length-normalised)" if self.per_token else "sum (not length-normalised)"
        return f"the {kind} of the answer tokens' log-probabilities, end-of-turn token included"


def evaluate_batch(predictor: Predictor, samples: list[Sample], options: EvalOptions) -> list[Outcome]:
    generated = predictor.generate(samples, options.max_new_tokens)
    # the swap check scores the same way
    choose = partial(predictor.choose, per_token=options.per_token, first_token=options.first_token)
    choice_lists = [options.choices or s.extra.get("choices") for s in samples]
    closed = [index for index, choices in enumerate(choice_lists) if choices]
    chosen = dict(zip(closed, choose([samples[i] for i in closed], [choice_lists[i] for i in closed])))
    swaps = swapped_choices(choose, samples, choice_lists) if options.swap_check else {}
    return [
        outcome(sample, answer, choice_lists[index], chosen.get(index), pair_record(sample, swaps.get(index)))
        for index, (sample, answer) in enumerate(zip(samples, generated))
    ]


def rank_quota(available: int, limit: int, world: WorldInfo) -> int:
    """Samples this rank takes: its whole slice, or its share of the split's first `limit` (rank r reads
    positions r, r + world_size, ...)."""
    return min(available, len(range(world.rank, limit, world.world_size))) if limit else available


def evaluate_split(
    predictor: Predictor, split: Path, world: WorldInfo, options: EvalOptions
) -> tuple[list[Outcome], int]:
    """This rank's outcomes and the number of unreadable samples it skipped."""
    config = StreamConfig(batch_size=options.batch_size, shuffle=False, remainder="pad")
    try:
        stream = ShardStream(str(split), config=config, rank=world.rank, world_size=world.world_size)
    except (ValueError, OSError) as error:
        raise UsageError(f"{split}: {first_line(error)}") from None
    loader = ShardLoader(stream, num_workers=options.num_workers)
    quota = rank_quota(len(stream), options.limit, world)
    outcomes: list[Outcome] = []
    with tqdm(total=quota, desc="evaluate", unit="sample", disable=not world.is_main) as bar:
        for samples in loader:
            samples = samples[: quota - len(outcomes)]
            if samples:
                outcomes += evaluate_batch(predictor, samples, options)
                bar.update(len(samples))
            if len(outcomes) >= quota:
                break
    return outcomes, loader.skipped


def gather(outcomes: list[Outcome], skipped: int) -> tuple[list[Outcome], int]:
    """Every rank's outcomes, de-duplicated by key (padding repeats samples) and sorted by key."""
    parts = [(outcomes, skipped)]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (outcomes, skipped))
    merged = {o.key: o for part, _ in parts for o in part}
    return [merged[key] for key in sorted(merged)], sum(count for _, count in parts)


@contextmanager
def evaluation_split(args: argparse.Namespace) -> Iterator[tuple[Path, dict]]:
    """The split folder to read and a description of it; a raw `--input` is built into a temporary one
    (on every rank alike: builds are deterministic, and no shared folder is needed)."""
    if args.shards is not None:
        yield args.shards, {"shards": str(args.shards)}
        return
    from data_shards.build import BuildConfig, build

    with tempfile.TemporaryDirectory(prefix="shardtune-eval-") as folder:
        built = build(
            BuildConfig(
                input=args.input,
                out=Path(folder),
                format=args.format,
                image_root=args.image_root,
                workers=0,
                progress=False,
            )
        )
        yield Path(folder) / "train", {"input": str(args.input), "read": built["read"], "rejected": built["rejected"]}


def check_arguments(args: argparse.Namespace) -> None:
    path, flag = (args.shards, "--shards") if args.shards is not None else (args.input, "--input")
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file or folder")
    for flag, value, least in (
        ("--batch-size", args.batch_size, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--limit", args.limit, 0),
        ("--num-workers", args.num_workers, 0),
    ):
        if value < least:
            raise UsageError(f"{flag} must be >= {least}, got {value}")


def run(
    args: argparse.Namespace, source: ModelSource, options: EvalOptions, world: WorldInfo, device: torch.device
) -> dict:
    predictor = Predictor(*load_model(source, device), device, rows_per_forward=options.batch_size)
    with evaluation_split(args) as (split, data):
        outcomes, skipped = gather(*evaluate_split(predictor, split, world, options))
    report = summarise(outcomes)
    pairs, items = pairwise_summary(outcomes)
    report.update(
        model=source.describe(),
        data=data,
        world_size=world.world_size,
        skipped_samples=skipped,
        max_new_tokens=options.max_new_tokens,
        num_errors=sum(not o.correct for o in outcomes),
        errors=error_examples(outcomes, args.max_errors),
        **pairs,
    )
    if "choice_accuracy" in report:
        report["choice_scoring"] = options.scoring()
    if world.is_main:
        write_report(args.out, report, outcomes, confusion_matrix(outcomes), items)
    return report


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="launch/evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(root)
    data = root.add_argument_group("data")
    which = data.add_mutually_exclusive_group(required=True)
    which.add_argument("--shards", type=Path, help="a built split folder (with index.json), e.g. shards/val")
    which.add_argument("--input", type=Path, help="a raw dataset, built into temporary shards first")
    data.add_argument("--format", choices=sorted(READERS), help="--input's format (detected when omitted)")
    data.add_argument("--image-root", type=Path, help="folder --input's image paths are relative to")
    data.add_argument("--limit", type=int, default=0, help="evaluate only the split's first N samples (0: all)")
    data.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per rank")
    root.add_argument("--out", type=Path, required=True, help="report folder")
    root.add_argument("--max-new-tokens", type=int, default=16, help="longest greedy answer")
    root.add_argument(
        "--choices",
        help="comma-separated closed answer set for every sample (default: a sample's own extra['choices'], if any)",
    )
    root.add_argument("--per-token", action="store_true", help="rank choices by mean, not summed, log-probability")
    root.add_argument(
        "--choice-scoring",
        choices=("auto", "sequence", "first-token"),
        default="auto",
        help="sequence: each answer's tokens; first-token: its first token at the answer position, as "
        "train.objective=choice trains (auto: first-token for a checkpoint trained so)",
    )
    root.add_argument(
        "--batch-size", type=int, default=8, help="samples per generation batch, and candidate rows per scoring forward"
    )
    root.add_argument("--max-errors", type=int, default=20, help="error examples in the report")
    root.add_argument(
        "--swap-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score pair samples again with their images swapped, for swap_consistency (one more closed-set scoring "
        "per pair)",
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check_arguments(args)
        source = source_from_args(args)
        first_token = (
            args.choice_scoring == "first-token" or args.choice_scoring == "auto" and source.objective == "choice"
        )
        options = EvalOptions(
            args.batch_size,
            args.max_new_tokens,
            parse_choices(args.choices),
            args.per_token,
            args.limit,
            args.num_workers,
            args.swap_check,
            first_token,
        )
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    world = world_from_env()
    try:
        with process_group(world, required=False) as device:
            report = run(args, source, options, world, device)
    except (UsageError, SourceError, BatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if world.is_main:
        print(
            json.dumps(
                {key: report[key] for key in SUMMARY_KEYS if key in report} | {"report": str(args.out / "report.json")}
            )
        )
    return 0
