"""`python -m data_shards pairs`: image folds and comparison pairs, sharded per fold (see `data_shards.pairs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_shards.cli import add_check_arguments, add_shard_arguments
from data_shards.images import ImagePolicy
from data_shards.pairs.errors import PairsError
from data_shards.pairs.plan import PairSettings
from data_shards.pairs.run import PairsJob, pairs_from_fold_csvs, pairs_from_scores
from data_shards.sources import SourceOptions
from data_shards.write import ShardLayout

DEFAULTS = PairSettings()
SCORES_ONLY = ("folds", "seed", "train_pairs", "similar_margin", "val_pairs", "score_bins")


def val_pairs_count(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or a number of pairs, got {text!r}") from None


def add_pairs_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("pairs", help="k folds of scored images, then comparison pairs per fold, as shards")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--scores", type=Path, help="per-image scores: `name score` lines, or a CSV image,score")
    source.add_argument(
        "--fold-csvs",
        nargs=2,
        metavar=("TRAIN", "VAL"),
        help="per-fold pair CSVs (img1,img2,label[,score1,score2]) as globs with {k}: 'train_fold{k}_*.csv' "
        "'eval_fold{k}_*.csv'",
    )
    parser.add_argument("--image-root", type=Path, required=True, help="folder the image names are relative to")
    parser.add_argument("--out", type=Path, required=True, help="output: fold{k}/{train,val}/, folds.json")
    parser.add_argument("--allow-leakage", action="store_true", help="shard folds with an image on both sides")
    parser.add_argument("--pairs-question", default=SourceOptions.pairs_question, help="the question asked")
    made = parser.add_argument_group("folds and pairs from --scores")
    made.add_argument("--folds", type=int, help=f"number of folds (default {DEFAULTS.folds})")
    made.add_argument("--seed", type=int, help=f"seed for folds and pairs (default {DEFAULTS.seed})")
    made.add_argument("--train-pairs", type=int, help=f"pairs per fold's train side (default {DEFAULTS.train_pairs})")
    made.add_argument(
        "--similar-margin", type=float, help=f"Similar when |score1 - score2| < this (default {DEFAULTS.margin})"
    )
    made.add_argument("--val-pairs", type=val_pairs_count, help="'all' pairs of held-out images (default), or N")
    made.add_argument(
        "--score-bins", type=int, help=f"equal-count score bins to stratify (default {DEFAULTS.score_bins})"
    )
    add_check_arguments(parser)
    add_shard_arguments(parser.add_argument_group("shards"))
    parser.set_defaults(run=command_pairs)


def command_pairs(args: argparse.Namespace) -> int:
    job = PairsJob(
        image_root=args.image_root,
        out=args.out,
        allow_leakage=args.allow_leakage,
        overwrite=args.overwrite,
        policy=ImagePolicy(args.max_pixels, args.max_side, args.jpeg_quality),
        layout=ShardLayout(args.shard_samples, args.shard_bytes),
        options=SourceOptions(pairs_question=args.pairs_question),
        keep_duplicates=args.keep_duplicates,
        workers=args.workers,
        progress=not args.no_progress,
    )
    if args.scores is not None:
        summary = pairs_from_scores(args.scores, settings_from_args(args), job)
    else:
        given = [f"--{name.replace('_', '-')}" for name in SCORES_ONLY if getattr(args, name) is not None]
        if given:
            raise PairsError(
                f"{', '.join(given)} apply to --scores only: --fold-csvs takes the folds and pairs as made"
            )
        summary = pairs_from_fold_csvs(*args.fold_csvs, job)
    print_summary(summary, args.out)
    return 0


def settings_from_args(args: argparse.Namespace) -> PairSettings:
    given = {
        "folds": args.folds,
        "seed": args.seed,
        "train_pairs": args.train_pairs,
        "margin": args.similar_margin,
        "val_pairs": args.val_pairs,
        "score_bins": args.score_bins,
    }
    return PairSettings(**{name: value for name, value in given.items() if value is not None})


def print_summary(summary: dict, out: Path) -> None:
    totals = summary["pairs"]
    print(f"pairs: read {totals['rows']} = written {totals['written']} + rejected {totals['rejected']}")
    for fold, sides in summary["folds"].items():
        for side, info in sides.items():
            labels = ", ".join(f"{label} {count}" for label, count in info["pairs"]["labels"].items())
            pairs = info["pairs"]
            print(
                f"  {fold} {side}: {info['images']} images, {pairs['written']} pairs ({labels}), "
                f"{pairs['rejected']} rejected"
            )
    guarantee = summary["guarantee"]
    print(
        f"train and val disjoint in every fold: {guarantee['train_val_disjoint']}; "
        f"every image in exactly one val fold: {guarantee['every_image_in_exactly_one_val_fold']}"
    )
    print(f"folds: {out / 'folds.json'}; per-fold reports: {out}/fold*/report.md")
