"""Answers from a model or a fine-tuned checkpoint: greedy generation, or the likeliest of a closed set.

`launch/predict.py --checkpoint RUN --image x.jpg --prompt "What color is the shape?"` prints one line.
`--model DIR` takes a plain or merged model folder; `--checkpoint` a run folder (its latest
checkpoint), a checkpoint folder or a PEFT adapter folder, on the base model named by `--base` or
the run's `config.resolved.json`.

Closed sets: each candidate is written as the final answer and scored by the sum of the
log-probabilities of its tokens after the prompt, end-of-turn token included (so a candidate that is
a prefix of another is not favoured), not length-normalised unless asked (`per_token`). The
prediction is the argmax, so it is always one of the candidates.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from data_shards.sample import IMAGE_TOKEN, ImageData, Sample, Turn
from trainer.checkpoint import LATEST, RUN_CONFIG
from trainer.chat.template import template_source
from trainer.collate import IGNORE_INDEX, Batch, build_collator, question
from trainer.evaluation import EvalBatch, dtype_of, generate, move, prompt_inputs
from trainer.mllama_fix import mask_image_free_rows
from trainer.model import DTYPES, four_bit_config
from trainer.processor import load_processor

ADAPTER_CONFIG = "adapter_config.json"


class UsageError(ValueError):
    """A path or option that cannot be used (missing model, checkpoint or image; bad --choices); says which."""


@dataclass
class ModelSource:
    """What to load: a model (a folder or hub id), optionally with a PEFT adapter on top."""

    model: str
    adapter: Path | None = None
    dtype: str = "auto"
    quant: dict | None = None

    def describe(self) -> dict[str, str | None]:
        return {"model": self.model, "adapter": str(self.adapter) if self.adapter else None, "dtype": self.dtype,
                "quant": self.quant["quant_type"] if self.quant else None}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="a plain or merged Hugging Face model folder")
    which.add_argument("--checkpoint", type=Path,
                       help="a training run folder (its latest checkpoint), a checkpoint folder, or an adapter folder")
    group.add_argument("--base", help="base model of --checkpoint (default: the run's config.resolved.json model.path)")
    group.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                       help="weights dtype (auto: the run's model.dtype for --checkpoint, else the saved one)")


def source_from_args(args: argparse.Namespace) -> ModelSource:
    if args.model is not None:
        if args.base:
            raise UsageError("--base goes with --checkpoint; --model is a whole model already")
        if not args.model.is_dir():
            raise UsageError(f"--model {args.model}: no such model folder")
        return ModelSource(str(args.model), None, args.dtype)
    adapter = find_adapter(args.checkpoint)
    run_config = read_run_config(adapter)
    base = args.base or run_config.get("model", {}).get("path") or recorded_base(adapter)
    if not base:
        raise UsageError(f"--checkpoint {args.checkpoint}: no base model recorded; pass --base")
    dtype = args.dtype if args.dtype != "auto" else run_config.get("model", {}).get("dtype", "auto")
    quant = run_config.get("quant") if run_config.get("quant", {}).get("load_in_4bit") else None
    return ModelSource(base, adapter, dtype, quant)


def find_adapter(path: Path) -> Path:
    """The adapter folder of a run folder (its latest checkpoint), a checkpoint folder, or an adapter folder."""
    if not path.is_dir():
        raise UsageError(f"--checkpoint {path}: no such folder")
    latest = path / "checkpoints" / LATEST
    if latest.exists():
        path = path / "checkpoints" / latest.read_text().strip()
    if (path / "adapter" / ADAPTER_CONFIG).exists():
        path = path / "adapter"
    if not (path / ADAPTER_CONFIG).exists():
        raise UsageError(f"--checkpoint {path}: no PEFT adapter (a run trained without LoRA has none: "
                         "export it to a model folder and pass --model)")
    return path


def read_run_config(adapter: Path) -> dict:
    """The training run's resolved config: the copy the trainer saves in the adapter folder, else the run's
    for a `checkpoints/stepN/adapter/` folder ({} when neither exists)."""
    for path in (adapter / RUN_CONFIG, adapter.parent.parent.parent / RUN_CONFIG):
        if path.exists() and (path.parent == adapter or adapter.name == "adapter"):
            return json.loads(path.read_text())
    return {}


def recorded_base(adapter: Path) -> str | None:
    return json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")


def load_model(source: ModelSource, device: torch.device):
    """(model in eval mode on `device`, processor); an unloadable model is a UsageError."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    dtype = DTYPES.get(source.dtype, "auto")
    quantized = {}
    if source.quant:  # a QLoRA adapter runs on the 4-bit base it was trained against
        compute = dtype if isinstance(dtype, torch.dtype) else torch.float32
        quantized = {"quantization_config": four_bit_config(source.quant["quant_type"], source.quant["double_quant"],
                                                            compute), "device_map": {"": device}}
    try:
        model = AutoModelForImageTextToText.from_pretrained(source.model, dtype=dtype, **quantized)
        mask_image_free_rows(model)
        processor = load_processor(source.model)
    except OSError as error:
        local = "" if Path(source.model).exists() else "no such folder; as a hub id: "
        hint = " (--base picks another base model)" if source.adapter is not None else ""
        raise UsageError(f"cannot load model {source.model}: {local}{first_line(error)}{hint}") from None
    if source.adapter is not None:
        model = PeftModel.from_pretrained(model, str(source.adapter))
    return (model if source.quant else model.to(device)).eval(), processor


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def with_answer(sample: Sample, answer: str, number: int) -> Sample:
    asked = question(sample)
    return replace(asked, key=f"{sample.key}#{number}", turns=[*asked.turns, Turn("assistant", answer)])


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its final answer's tokens (the last labelled span) and their count."""
    targets = labels[:, 1:]
    mask = last_span(targets != IGNORE_INDEX)
    log_probs = logits[:, :-1][mask].float().log_softmax(dim=-1)
    picked = log_probs.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1).double()
    sums = torch.zeros(len(labels), dtype=torch.float64, device=logits.device)
    return sums.index_add(0, mask.nonzero()[:, 0], picked), mask.sum(dim=1)


def last_span(mask: torch.Tensor) -> torch.Tensor:
    """Keep only each row's last run of True (earlier assistant turns of a chat are not the answer)."""
    starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]
    run = starts.cumsum(dim=1)
    return mask & (run == run.max(dim=1, keepdim=True).values)


@dataclass
class Choice:
    answer: str
    scores: dict[str, float]


def pick(choices: list[str], scores: list[float]) -> Choice:
    best = max(range(len(choices)), key=scores.__getitem__)
    return Choice(choices[best], dict(zip(choices, scores)))


class Predictor:
    """Greedy answers (left-padded prompts, as training evaluation) and closed-set choices (right-padded)."""

    def __init__(self, model, processor, device: torch.device, rows_per_forward: int = 8):
        self.model = model
        self.device = device
        self.rows_per_forward = rows_per_forward
        self.tokenizer = processor.tokenizer
        self.scorer = build_collator(processor, model, sys.maxsize, template_source(model.name_or_path))
        self.prompter = copy.deepcopy(processor)
        self.prompter.tokenizer.padding_side = "left"

    @torch.no_grad()
    def generate(self, samples: list[Sample], max_new_tokens: int) -> list[str]:
        prompts = prompt_inputs(self.scorer, self.prompter, samples)
        item = EvalBatch(Batch({}, [s.key for s in samples]), prompts, [])
        answers = generate(self.model, item, self.tokenizer, self.device, max_new_tokens, synced=False)
        return [answer.strip() for answer in answers]

    @torch.no_grad()
    def choose(self, samples: list[Sample], choice_lists: list[list[str]], per_token: bool = False) -> list[Choice]:
        candidates = [with_answer(s, c, n) for s, choices in zip(samples, choice_lists) for n, c in enumerate(choices)]
        scores: list[float] = []
        for start in range(0, len(candidates), self.rows_per_forward):
            scores += self.score(candidates[start:start + self.rows_per_forward], per_token)
        results, offset = [], 0
        for choices in choice_lists:
            results.append(pick(choices, scores[offset:offset + len(choices)]))
            offset += len(choices)
        return results

    def score(self, candidates: list[Sample], per_token: bool) -> list[float]:
        inputs = move(self.scorer(candidates).inputs, self.device, dtype_of(self.model))
        labels = inputs.pop("labels")
        sums, counts = answer_logprobs(self.model(**inputs, use_cache=False).logits, labels)
        return (sums / counts if per_token else sums).tolist()


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
    root = argparse.ArgumentParser(prog="launch/predict.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
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
