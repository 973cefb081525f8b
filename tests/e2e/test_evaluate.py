"""Evaluation and prediction: choice scoring, match rules and the confusion matrix on hand-made data; then a
tiny LLaVA trained a little, evaluated from its checkpoint (on 1 and 2 ranks) and asked for one answer."""

import csv
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, launch_training, run_process_group, training_env

from data_shards.sample import Sample, Turn
from data_shards.stream import ShardStream, StreamConfig
from trainer.batches.collate import IGNORE_INDEX
from trainer.distributed.launchers import torchrun_command
from trainer.evaluate.predict_cli import main as predict_main
from trainer.evaluate.predictor import Predictor, answer_logprobs
from trainer.evaluate.report import write_report
from trainer.evaluate.run import EvalOptions, evaluate_batch, main
from trainer.evaluate.scores import Outcome, confusion_matrix, summarise

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]


# --- hand-made -------------------------------------------------------------------------------------


def test_answer_logprobs_sum_the_last_answer_span_only():
    probabilities = torch.full((2, 5, 3), 1 / 3)
    probabilities[0, 2] = torch.tensor([0.25, 0.25, 0.5])  # predicts position 3 (label 2)
    probabilities[0, 3] = torch.tensor([0.1, 0.6, 0.3])  # predicts position 4 (label 0)
    probabilities[1, 1] = torch.tensor([0.2, 0.7, 0.1])  # predicts position 2 (label 1)
    labels = torch.tensor(
        [
            [IGNORE_INDEX, 1, IGNORE_INDEX, 2, 0],  # an earlier answer (1), then the final one
            [IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX],
        ]
    )  # right padding
    sums, counts = answer_logprobs(probabilities.log() + 7.0, labels)  # a constant shift changes nothing
    assert counts.tolist() == [2, 1]
    assert sums.tolist() == pytest.approx([math.log(0.5 * 0.1), math.log(0.7)])


class FakePredictor(Predictor):
    """Scores from a table (key → answer → score) and a fixed generated answer, so the argmax is known."""

    def __init__(self, table: dict[str, dict[str, float]], generated: dict[str, str]):
        self.table, self.generated, self.rows_per_forward = table, generated, 2

    def generate(self, samples, max_new_tokens):
        return [self.generated[s.key] for s in samples]

    def score(self, candidates, per_token):
        return [self.table[c.key.split("#")[0]][c.turns[-1].text] for c in candidates]


def sample(key: str, answer: str, label: str | None = None, choices: list[str] | None = None) -> Sample:
    turns = [Turn("user", "Which one?"), Turn("assistant", answer)]
    return Sample(key, [], turns, label=label, extra={"choices": choices} if choices else {})


def test_choice_is_the_argmax_and_always_in_the_set():
    samples = [
        sample("a", "First", "First", ["First", "Second", "Similar"]),
        sample("b", "Second", "Second", ["First", "Second", "Similar"]),
        sample("c", "blue"),
    ]  # no closed set: the greedy answer is its prediction
    table = {
        "a": {"First": -1.0, "Second": -3.0, "Similar": -2.0},
        "b": {"First": -0.5, "Second": -4.0, "Similar": -9.0},
    }
    fake = FakePredictor(table, {"a": "first!", "b": "Nonsense", "c": "Blue."})
    outcomes = evaluate_batch(fake, samples, EvalOptions())
    assert [o.prediction for o in outcomes] == ["First", "First", "Blue."]
    assert outcomes[1].choice_scores == table["b"]
    choices = ["alpha", "beta", "gamma", "delta"]
    rng = random.Random(0)
    table = {str(n): {c: rng.uniform(-50, 0) for c in choices} for n in range(20)}
    fake = FakePredictor(table, dict.fromkeys(table, "anything at all"))
    picked = evaluate_batch(fake, [sample(key, "beta") for key in table], EvalOptions(choices=choices))
    assert [o.choice for o in picked] == [max(table[o.key], key=table[o.key].get) for o in picked]
    assert all(o.choice in choices for o in picked)


def outcome(key: str, reference: str, generated: str, label: str | None = None) -> Outcome:
    return Outcome(key, "Which colour?", reference, label or reference, generated)


def test_exact_and_normalised_match():
    outcomes = [
        outcome("1", "red", "red"),
        outcome("2", "red", "Red."),
        outcome("3", "Blue", " blue "),
        outcome("4", "red", "red car"),
        outcome("5", "green", "green\n"),
    ]
    report = summarise(outcomes)
    assert report["exact_match"] == 2 / 5  # "red" and "green\n": only surrounding whitespace differs
    assert report["normalised_match"] == report["accuracy"] == 4 / 5  # also case and end punctuation


def test_per_class_accuracy_and_confusion_matrix(tmp_path):
    outcomes = [
        outcome("1", "cat", "cat"),
        outcome("2", "cat", "dog"),
        outcome("3", "cat", "a bird?"),
        outcome("4", "dog", "Dog"),
        outcome("5", "dog", "dog"),
        outcome("6", "dog", "cat"),
        outcome("7", "It is a bird.", "it is a bird", label="bird"),
        outcome("8", "bird", "cat", label="bird"),
    ]
    report = summarise(outcomes)
    assert report["per_class"] == {
        "bird": {"accuracy": 0.5, "correct": 1, "total": 2},
        "cat": {"accuracy": 1 / 3, "correct": 1, "total": 3},
        "dog": {"accuracy": 2 / 3, "correct": 2, "total": 3},
    }
    report.update(
        model={"model": "fake", "adapter": None}, data={"shards": "none"}, world_size=1, num_errors=4, errors=[]
    )
    write_report(tmp_path, report, outcomes, confusion_matrix(outcomes))
    rows = list(csv.reader((tmp_path / "confusion.csv").open()))
    assert rows == [
        ["true \\ predicted", "bird", "cat", "dog", "(other)"],
        ["bird", "1", "1", "0", "0"],
        ["cat", "0", "1", "1", "1"],
        ["dog", "0", "1", "2", "0"],
    ]
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["accuracy"] == 4 / 8
    assert "| cat | 0.3333 | 1 | 3 |" in (tmp_path / "report.md").read_text()


def test_missing_paths_fail_in_one_line(tmp_path, color_shards, capsys):
    val, out = str(color_shards / "val"), str(tmp_path / "out")
    assert main(["--model", str(tmp_path / "absent"), "--shards", val, "--out", out]) == 2
    assert main(["--model", str(tmp_path), "--shards", str(tmp_path / "nowhere"), "--out", out]) == 2
    assert main(["--checkpoint", str(tmp_path), "--shards", val, "--out", out]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3
    assert "absent: no such model folder" in errors[0] and "nowhere: no such file or folder" in errors[1]
    assert "no PEFT adapter" in errors[2]
    assert predict_main(["--model", str(tmp_path), "--image", str(tmp_path / "no.jpg"), "--prompt", "Which?"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --image {tmp_path / 'no.jpg'}: no such file"


# --- a tiny LLaVA, trained a little ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tiny_llava, color_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evaluate") / "run"
    result = launch_training(
        "in-process",
        1,
        [
            f"model.path={tiny_llava}",
            f"data.train={color_shards / 'train'}",
            f"data.val={color_shards / 'val'}",
            f"train.output_dir={run}",
            "train.micro_batch_size=8",
            "train.max_steps=100",
            "data.num_workers=1",
            "eval.at_start=false",
            "train.log_every=10",
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run


def evaluate(out: Path, *arguments: str) -> dict:
    assert main([*arguments, "--out", str(out), "--max-new-tokens", "3"]) == 0
    return json.loads((out / "report.json").read_text())


def predictions(out: Path) -> dict[str, dict]:
    return {row["key"]: row for row in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_checkpoint_evaluation_matches_the_training_evaluation(trained_run, color_shards, tmp_path):
    report = evaluate(tmp_path / "plain", "--checkpoint", str(trained_run), "--shards", str(color_shards / "val"))
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert report["num_samples"] == 32 and report["accuracy"] >= 0.9
    assert report["accuracy"] == summary["accuracy_after"]
    assert sum(row["total"] for row in report["per_class"].values()) == 32
    chosen = evaluate(
        tmp_path / "choices",
        "--checkpoint",
        str(trained_run),
        "--shards",
        str(color_shards / "val"),
        "--choices",
        ",".join(COLORS),
    )
    assert chosen["choice_accuracy"] >= 0.9 and chosen["num_choice_samples"] == 32
    assert all(row["choice"] in COLORS for row in predictions(tmp_path / "choices").values())
    assert (tmp_path / "choices" / "confusion.png").exists() and (tmp_path / "choices" / "report.md").exists()


@pytest.fixture(scope="module")
def odd_split(tmp_path_factory) -> Path:
    """33 samples: on 2 ranks the second one reads a padded repeat, which must not count twice."""
    from data_shards.build import BuildConfig, build
    from data_shards.synthetic import make_dataset

    root = tmp_path_factory.mktemp("odd")
    dataset = make_dataset("llava", root / "raw", n=33, seed=1, task="color")
    build(
        BuildConfig(input=dataset.input, out=root / "shards", image_root=dataset.image_root, workers=0, progress=False)
    )
    return root / "shards" / "train"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_give_the_same_report_as_one(trained_run, odd_split, tmp_path):
    arguments = [
        "--checkpoint",
        str(trained_run),
        "--shards",
        str(odd_split),
        "--choices",
        ",".join(COLORS),
        "--batch-size",
        "4",
    ]
    single = evaluate(tmp_path / "one", *arguments)
    extra = ["--out", str(tmp_path / "two"), "--max-new-tokens", "3"]
    command = torchrun_command(2, ROOT / "launch/evaluate.py", [*arguments, *extra])
    result = run_process_group(command, training_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "report.json").read_text())
    assert double["world_size"] == 2 and single["num_samples"] == double["num_samples"] == 33
    for key in ("accuracy", "exact_match", "normalised_match", "choice_accuracy", "per_class", "num_errors"):
        assert double[key] == single[key], key
    one, two = predictions(tmp_path / "one"), predictions(tmp_path / "two")
    answers = [{key: (row["generated"], row["choice"]) for key, row in rows.items()} for rows in (one, two)]
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_predict_names_the_colour_of_a_val_image(trained_run, color_shards, tmp_path):
    evaluated = evaluate(
        tmp_path / "eval", "--checkpoint", str(trained_run), "--shards", str(color_shards / "val"), "--limit", "8"
    )
    right = {key for key, row in predictions(tmp_path / "eval").items() if row["correct"]}
    chosen = next(
        s
        for s in ShardStream(str(color_shards / "val"), config=StreamConfig(shuffle=False))
        if s.key in right and s.turns[0].text == "<image>\nWhat color is the shape?" and len(s.turns) == 2
    )
    image = tmp_path / f"shape.{chosen.images[0].extension}"
    image.write_bytes(chosen.images[0].data)
    command = [
        sys.executable,
        str(ROOT / "launch/predict.py"),
        "--checkpoint",
        str(trained_run),
        "--image",
        str(image),
        "--prompt",
        "What color is the shape?",
        "--max-new-tokens",
        "3",
    ]
    result = subprocess.run(command, cwd=ROOT, env=training_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == chosen.turns[-1].text
    assert evaluated["num_samples"] == 8


def test_untrained_model_chooses_only_in_set_answers(tiny_llava, tmp_path):
    from data_shards.synthetic import make_dataset

    pairs = make_dataset("pairs", tmp_path / "pairs", n=6, seed=0)
    report = evaluate(
        tmp_path / "pairs-eval", "--model", str(tiny_llava), "--input", str(pairs.input), "--format", "pairs"
    )
    rows = predictions(tmp_path / "pairs-eval").values()
    assert report["num_choice_samples"] == report["num_samples"] == len(rows) > 0
    assert all(row["choice"] in ("First", "Second", "Similar") for row in rows)
    odd_set = ["light blue", "x", "Similar", "a much longer answer than the others"]
    report = evaluate(
        tmp_path / "odd-eval", "--model", str(tiny_llava), "--input", str(pairs.input), "--choices", ",".join(odd_set)
    )
    assert all(row["choice"] in odd_set for row in predictions(tmp_path / "odd-eval").values())
    assert report["choice_scoring"].startswith("the sum (not length-normalised)")
    report = evaluate(
        tmp_path / "mean-eval",
        "--model",
        str(tiny_llava),
        "--input",
        str(pairs.input),
        "--choices",
        ",".join(odd_set),
        "--per-token",
        "--limit",
        "2",
    )
    assert report["num_samples"] == 2 and report["choice_scoring"].startswith("the mean (length-normalised)")


@pytest.mark.slow
def test_qlora_checkpoint_is_evaluated_on_its_4bit_base(tiny_llava, color_shards, tmp_path):
    run = tmp_path / "qlora"
    result = launch_training(
        "in-process",
        1,
        [
            f"model.path={tiny_llava}",
            f"data.train={color_shards / 'train'}",
            f"data.val={color_shards / 'val'}",
            f"train.output_dir={run}",
            "train.micro_batch_size=8",
            "train.max_steps=60",
            "data.num_workers=0",
            "quant.load_in_4bit=true",
            "eval.max_new_tokens=3",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((run / "train_summary.json").read_text())["accuracy_after"]
    report = evaluate(tmp_path / "eval", "--checkpoint", str(run), "--shards", str(color_shards / "val"))
    assert report["model"]["quant"] == "nf4" and report["accuracy"] == expected
    bare = tmp_path / "bare-adapter"  # copied out of its run: the run's config travels in the adapter folder
    shutil.copytree(Path(json.loads((run / "train_summary.json").read_text())["checkpoint"]) / "adapter", bare)
    report = evaluate(tmp_path / "eval-bare", "--checkpoint", str(bare), "--shards", str(color_shards / "val"))
    assert report["model"]["quant"] == "nf4" and report["accuracy"] == expected
