"""`launch/predict.py --checkpoint RUN --image x.jpg --prompt "What color is the shape?"` prints one line.

`--model DIR` takes a plain or merged model folder; `--checkpoint` a run folder (its latest checkpoint), a
checkpoint folder or a PEFT adapter folder, on the base model named by `--base` or the run's resolved config.
`--choices a,b,c` prints the likeliest of a closed set instead of the greedy answer.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_shards.sample import IMAGE_TOKEN, ImageData, Sample, Turn
from trainer.evaluate.model_source import (
    UsageError,
    add_model_arguments,
    default_device,
    first_line,
    load_model,
    source_from_args,
)
from trainer.evaluate.predictor import Predictor


def parse_choices(text: str | None) -> list[str] | None:
    if text is None:
        return None
    choices = [choice.strip() for choice in text.split(",") if choice.strip()]
    if len(choices) < 2 or len(set(choices)) != len(choices):
        raise UsageError(f"--choices {text!r}: give at least two distinct comma-separated answers")
    return choices


def read_image(path: Path) -> ImageData:
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image_format = (image.format or "png").lower()
    except FileNotFoundError:
        raise UsageError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"--image {path}: not a readable image ({first_line(error)})") from None
    return ImageData(data, image_format)


def prompt_sample(images: list[Path], prompt: str) -> Sample:
    """One user turn; an `<image>` placeholder per image goes in front unless the prompt places them."""
    placed = prompt.count(IMAGE_TOKEN)
    if placed and placed != len(images):
        raise UsageError(f"--prompt has {placed} {IMAGE_TOKEN} placeholders for {len(images)} --image files")
    text = prompt if placed else f"{IMAGE_TOKEN}\n" * len(images) + prompt
    return Sample("prompt", [read_image(path) for path in images], [Turn("user", text)])


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="launch/predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(root)
    root.add_argument("--image", type=Path, action="append", required=True, help="an image (repeat for several)")
    root.add_argument("--prompt", required=True, help=f"the question ({IMAGE_TOKEN} placeholders optional)")
    root.add_argument("--max-new-tokens", type=int, default=32, help="longest generated answer")
    root.add_argument("--choices", help="comma-separated closed answer set: print the likeliest one")
    root.add_argument("--per-token", action="store_true", help="rank choices by mean, not summed, log-probability")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        choices = parse_choices(args.choices)
        sample = prompt_sample(args.image, args.prompt)
        device = default_device()
        predictor = Predictor(*load_model(source_from_args(args), device), device)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if choices:
        answer = predictor.choose([sample], [choices], args.per_token)[0].answer
    else:
        answer = predictor.generate([sample], args.max_new_tokens)[0]
    print(" ".join(answer.split()))
    return 0
