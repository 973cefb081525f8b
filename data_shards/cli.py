"""`python -m data_shards build|validate|index|inspect|synth|pairs`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_shards.build import BuildConfig, build, default_workers
from data_shards.images import DEFAULT_MAX_PIXELS, ImagePolicy
from data_shards.records import SourceError
from data_shards.report import image_summary, source_split, split_overlap_warning
from data_shards.sources import READERS, SourceOptions, detect_format
from data_shards.split import DEFAULT_TIME_GAP, STRATEGIES, SplitError, SplitSpec
from data_shards.synthetic import SYNTH_FORMATS
from data_shards.write import ShardLayout

DEFAULT_SPLIT = "train=1.0"
USER_ERRORS = (SourceError, SplitError, FileExistsError, FileNotFoundError, ValueError)


def byte_size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input")
    group.add_argument("--input", type=Path, required=True, help="dataset file (JSON, JSONL, CSV) or folder")
    group.add_argument("--format", choices=sorted(READERS), help="source format (detected when omitted)")
    group.add_argument(
        "--image-root",
        type=Path,
        help="folder image paths are relative to (default: the input's folder); parquet/hf-disk: where embedded "
        "images are written (default: <input>.images beside the input)",
    )
    group.add_argument(
        "--class-names",
        type=Path,
        help="classes: JSON {folder: name} or one name per line; flowers102: line i = label i",
    )
    group.add_argument(
        "--class-choices", action="store_true", help="class questions: every class name in extra.choices"
    )
    group.add_argument("--class-question", default=SourceOptions.class_question, help="classes: the question asked")
    group.add_argument("--caption-prompt", default=SourceOptions.caption_prompt, help="captions/manifest: the prompt")
    group.add_argument("--pairs-question", default=SourceOptions.pairs_question, help="pairs: the question asked")
    add_check_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for splits")


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Image checks, re-encoding and duplicates; worker processes and progress bars."""
    checks = parser.add_argument_group("checks and re-encoding")
    checks.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="reject images with more pixels")
    checks.add_argument("--max-side", type=int, help="re-encode so the longest side is at most this (JPEG)")
    checks.add_argument(
        "--short-side", type=int, help="re-encode so the shortest side is at most this (JPEG), as CLIP processors keep"
    )
    checks.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality when re-encoding")
    checks.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep exact duplicate samples (same text and images) instead of rejecting them",
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="worker processes (0: in-process)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("splits and shards")
    group.add_argument("--split", default=DEFAULT_SPLIT, help="NAME=FRACTION,... e.g. train=0.9,val=0.1")
    group.add_argument(
        "--split-by",
        choices=STRATEGIES,
        help="random; label (stratified); group (source groups); image (samples sharing an image); source (the "
        "splits the source gives, e.g. flowers102's setid.mat or HF file names). Default: source for flowers102 "
        "when no --split or --folds is given, else random; time (per video, earlier frames to the first split, "
        "later ones to the next, --time-gap frames dropped between)",
    )
    group.add_argument(
        "--time-gap",
        type=int,
        default=DEFAULT_TIME_GAP,
        help=f"--split-by time: video frames dropped between splits (default {DEFAULT_TIME_GAP})",
    )
    group.add_argument("--folds", type=int, help="k-fold: number of folds (writes train/ and val/)")
    group.add_argument("--fold", type=int, help="k-fold: the held-out fold, 0-based")
    add_shard_arguments(group)


def add_shard_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--shard-samples", type=int, default=1000, help="samples per shard at most")
    group.add_argument(
        "--shard-bytes", type=byte_size, default=256 * 1024**2, help="bytes per shard at most (e.g. 512MB)"
    )
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def config_from_args(args: argparse.Namespace, write_shards: bool) -> BuildConfig:
    options = SourceOptions(
        caption_prompt=args.caption_prompt,
        class_question=args.class_question,
        class_names=args.class_names,
        class_choices=args.class_choices,
        pairs_question=args.pairs_question,
    )
    split = (
        SplitSpec.parse(args.split, split_strategy(args), args.folds, args.fold, args.time_gap)
        if write_shards
        else SplitSpec()
    )
    return BuildConfig(
        input=args.input,
        out=args.out,
        format=args.format,
        image_root=args.image_root,
        split=split,
        seed=args.seed,
        policy=ImagePolicy(args.max_pixels, args.max_side, args.jpeg_quality, args.short_side),
        layout=ShardLayout(args.shard_samples, args.shard_bytes) if write_shards else ShardLayout(),
        options=options,
        workers=args.workers,
        keep_duplicates=args.keep_duplicates,
        overwrite=getattr(args, "overwrite", False) or not write_shards,
        write_shards=write_shards,
        progress=not args.no_progress,
    )


def split_strategy(args: argparse.Namespace) -> str:
    """--split-by as given; else `source` for a release with its own split (flowers102) unless ratios or folds are."""
    if args.split_by or args.split != DEFAULT_SPLIT or args.folds is not None:
        return args.split_by or "random"
    fmt = args.format or (detect_format(args.input) if args.input.is_dir() else None)
    return "source" if getattr(READERS.get(fmt), "KEEPS_SPLIT", False) else "random"


def command_build(args: argparse.Namespace) -> int:
    report = build(config_from_args(args, write_shards=True))
    print_summary(report, args.out)
    return 0


def command_validate(args: argparse.Namespace) -> int:
    report = build(config_from_args(args, write_shards=False))
    print_summary(report, args.out)
    return 0


def print_summary(report: dict, out: Path) -> None:
    print(f"read {report['read']} = written {report['written']} + rejected {report['rejected']}")
    for reason, count in report["rejects_by_reason"].items():
        print(f"  rejected {count:6d}  {reason}")
    renamed = report["renamed_keys"]
    if renamed["count"]:
        print(f"  renamed  {renamed['count']:6d}  repeating an earlier id ({renamed['repeated_ids']} ids)")
    if report["kept_duplicates"]:
        print(f"  kept     {report['kept_duplicates']:6d}  exact duplicates")
    if source_split(report):
        print("  splits as the source gives them (--split-by source), not re-split")
    for name, split in report["splits"].items():
        print(f"  {name}: {split['samples']} samples in {split['shards']} shards")
    print(f"  {image_summary(report['stats']['images'])}")
    warning = split_overlap_warning(report)
    if warning:
        print(warning, file=sys.stderr)
    print(f"report: {out / 'report.md'}")


def command_inspect(args: argparse.Namespace) -> int:
    from data_shards.inspect import inspect_shards

    print(inspect_shards(args.path, args.samples, args.contact_sheet))
    return 0


def command_index(args: argparse.Namespace) -> int:
    """Exit status 1 when a tar was left out as corrupt (the index of the others is written)."""
    from data_shards.foreign import Fields
    from data_shards.foreign_index import index_folder, summary_lines

    report = index_folder(args.path, Fields.parse(args.fields, args.caption_prompt), args.validate)
    print("\n".join(summary_lines(report, args.path)))
    for name, error in report["corrupt_tars"].items():
        print(f"error: {args.path / name}: corrupt tar, left out of the index ({error})", file=sys.stderr)
    return 1 if report["corrupt_tars"] else 0


def command_synth(args: argparse.Namespace) -> int:
    from data_shards.synthetic import make_dataset

    dataset = make_dataset(
        args.format,
        args.out,
        n=args.n,
        seed=args.seed,
        image_size=args.image_size,
        defects=args.defects,
        task=args.task,
    )
    print(
        json.dumps(
            {
                "format": dataset.format,
                "input": str(dataset.input),
                "image_root": str(dataset.image_root) if dataset.image_root else None,
                "records": dataset.num_records,
            }
        )
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m data_shards", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="validate, split and write WebDataset shards")
    add_input_arguments(build_parser)
    add_split_arguments(build_parser)
    build_parser.add_argument("--out", type=Path, required=True, help="output folder ({split}/shard-*.tar)")
    build_parser.set_defaults(run=command_build)
    validate_parser = commands.add_parser("validate", help="check a dataset and write the report only")
    add_input_arguments(validate_parser)
    validate_parser.add_argument(
        "--out", type=Path, required=True, help="folder for report.json, report.md, rejects.jsonl"
    )
    validate_parser.set_defaults(run=command_validate)
    index_parser = commands.add_parser("index", help="index WebDataset tars written by others, in place")
    index_parser.add_argument("path", type=Path, help="folder of *.tar (e.g. img2dataset output)")
    index_parser.add_argument(
        "--fields",
        help="member extensions: NAME=EXT,... with NAME image or caption (default image=jpg/jpeg/png/webp, "
        "caption=txt), e.g. caption=txt,image=jpg",
    )
    index_parser.add_argument("--caption-prompt", default=SourceOptions.caption_prompt, help="the user turn")
    index_parser.add_argument("--validate", action="store_true", help="decode every image, leave out bad ones")
    index_parser.set_defaults(run=command_index)
    inspect_parser = commands.add_parser("inspect", help="counts and a few samples of built shards")
    inspect_parser.add_argument("path", type=Path, help="a build output folder or one split folder")
    inspect_parser.add_argument("--samples", type=int, default=3, help="samples to print per split")
    inspect_parser.add_argument("--contact-sheet", type=Path, help="write a PNG grid of the first images here")
    inspect_parser.set_defaults(run=command_inspect)
    synth_parser = commands.add_parser("synth", help="write a synthetic dataset in one source format")
    synth_parser.add_argument("--format", choices=sorted(SYNTH_FORMATS), required=True)
    synth_parser.add_argument("--out", type=Path, required=True)
    synth_parser.add_argument("--n", type=int, default=200)
    synth_parser.add_argument("--seed", type=int, default=0)
    synth_parser.add_argument("--image-size", type=int, default=32)
    synth_parser.add_argument("--task", choices=("color", "shape", "mixed"), default="color")
    synth_parser.add_argument("--defects", action="store_true", help="inject broken and unusual samples")
    synth_parser.set_defaults(run=command_synth)
    from data_shards.pairs.cli import add_pairs_parser  # here, not at the top: it builds on this module's groups

    add_pairs_parser(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
