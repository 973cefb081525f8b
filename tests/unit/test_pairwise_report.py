"""Pair samples in evaluation: the swap check and Bradley–Terry metrics on hand-made outcomes and fake
predictors, the report files, a tiny LLaVA evaluated on pair shards in-process; and the k-fold aggregate."""

import csv
import io
import json
import math
from itertools import combinations
from pathlib import Path

import pytest
from conftest import ROOT, run_process_group, training_env
from PIL import Image

from data_shards.sample import ImageData, Sample, Turn
from data_shards.sources.common import SourceOptions
from data_shards.write import shard_name, write_index, write_shard
from trainer.distributed.launchers import torchrun_command
from trainer.evaluate.aggregate import main as aggregate_main
from trainer.evaluate.bradley_terry import fit
from trainer.evaluate.pair_report import pairwise_summary
from trainer.evaluate.pairwise import PairRecord, consistent, pair_record, swapped
from trainer.evaluate.predictor import Predictor
from trainer.evaluate.report import write_report
from trainer.evaluate.run import EvalOptions, evaluate_batch, main
from trainer.evaluate.scores import Outcome, confusion_matrix, summarise

CHOICES = ["First", "Second", "Similar"]


def pair_sample(key: str, sizes: tuple[int, int], items: tuple[str, str], images: list[ImageData] | None = None):
    label = "First" if sizes[0] > sizes[1] else "Second" if sizes[1] > sizes[0] else "Similar"
    extra = {"choices": CHOICES, "score1": float(sizes[0]), "score2": float(sizes[1]), "items": list(items)}
    images = images or [ImageData(str(size).encode(), "png") for size in sizes]
    turns = [Turn("user", SourceOptions.pairs_question), Turn("assistant", label)]
    return Sample(key, images, turns, label=label, extra=extra)


# --- swapping and consistency ----------------------------------------------------------------------


def test_a_swapped_pair_reverses_the_images_only():
    original = pair_sample("p1", (3, 5), ("big", "small"))
    reversed_ = swapped(original)
    assert [image.data for image in reversed_.images] == [b"5", b"3"] and reversed_.key == "p1/swapped"
    assert reversed_.turns == original.turns and reversed_.extra == original.extra
    assert [image.data for image in original.images] == [b"3", b"5"]  # the original is left alone
    assert pair_record(original, None) == PairRecord(["big", "small"], [3.0, 5.0], None)
    plain = Sample("q", original.images, original.turns, extra={"choices": CHOICES})
    assert pair_record(plain, None) is None


def test_consistency_is_the_mirror_of_the_answer():
    assert consistent("First", "Second") and consistent("Second", "first.") and consistent("Similar", "Similar")
    assert not consistent("First", "First") and not consistent("Similar", "Second")
    assert not consistent("no idea", "Second")


class SizePredictor(Predictor):
    """Reads each image's "size" from its bytes: symmetric by construction when `biased` is off, else it
    always prefers the first image."""

    def __init__(self, biased: bool = False):
        self.biased, self.rows_per_forward = biased, 4

    def generate(self, samples, max_new_tokens):
        return ["whatever" for _ in samples]

    def score(self, candidates, per_token):
        scores = []
        for candidate in candidates:
            first, second = (int(image.data) for image in candidate.images)
            answer = "First" if self.biased or first > second else "Second" if second > first else "Similar"
            scores.append(0.0 if candidate.turns[-1].text == answer else -1.0)
        return scores


def size_pairs() -> list[Sample]:
    sizes = {"a": 4, "b": 3, "c": 3, "d": 1}
    return [pair_sample(f"{x}{y}", (sizes[x], sizes[y]), (x, y)) for x, y in combinations("abcd", 2)]


def test_a_symmetric_predictor_is_swap_consistent_and_a_biased_one_is_not():
    outcomes = evaluate_batch(SizePredictor(), size_pairs(), EvalOptions())
    assert [o.pair.swapped_choice for o in outcomes] == ["Second", "Second", "Second", "Similar", "Second", "Second"]
    report, table = pairwise_summary(outcomes)
    assert report["swap_consistency"] == 1.0 and report["num_swap_checked"] == report["num_pairs"] == 6
    assert summarise(outcomes)["choice_accuracy"] == 1.0
    assert table.items == ["a", "b", "c", "d"] and table.true_scores == [4.0, 3.0, 3.0, 1.0]
    b, c = table.strengths[1:3]  # tied by the same evidence; equal up to rounding, so their ranks may split
    assert table.strengths[0] > b > table.strengths[3] and b == pytest.approx(c)
    assert report["bt_spearman"] > 0.9 and report["bt_pearson"] > 0.9
    biased = evaluate_batch(SizePredictor(biased=True), size_pairs(), EvalOptions())
    assert pairwise_summary(biased)[0]["swap_consistency"] == 0.0
    unchecked = evaluate_batch(SizePredictor(), size_pairs(), EvalOptions(swap_check=False))
    summary = pairwise_summary(unchecked)[0]
    assert "swap_consistency" not in summary and summary["bt_pearson"] == report["bt_pearson"]


# --- Bradley–Terry from predictions ----------------------------------------------------------------


def pair_outcome(key, items, scores, prediction, reference="First", swapped_choice=None, choice=True) -> Outcome:
    record = PairRecord(list(items), list(scores), swapped_choice)
    chosen = prediction if choice else None
    return Outcome(key, "Compare", reference, reference, prediction, CHOICES, chosen, None, record)


def hand_made() -> list[Outcome]:
    return [
        pair_outcome("1", "ab", (3, 2), "First", swapped_choice="Second"),  # consistent
        pair_outcome("2", "bc", (2, 1), "First", reference="Second", swapped_choice="First"),  # not
        pair_outcome("3", "ca", (1, 4), "Second", reference="Second", swapped_choice="First"),  # consistent
        pair_outcome("4", "ba", (2, 3), "Second", reference="Second"),  # not checked
        pair_outcome("5", "ad", (3, 9), "no idea", reference="Second", choice=False),  # no comparison
        pair_outcome("7", "bb", (2, 2), "Similar", reference="Similar"),  # no comparison either
        Outcome("6", "Which colour?", "red", "red", "red"),  # not a pair
    ]


def test_summary_fits_the_predictions_not_the_references():
    report, table = pairwise_summary(hand_made())
    assert report["num_pairs"] == 6 and report["num_swap_checked"] == 3
    assert report["swap_consistency"] == pytest.approx(2 / 3)
    expected = fit([("a", "b", "First"), ("b", "c", "First"), ("c", "a", "Second"), ("b", "a", "Second")])
    assert table.items == ["a", "b", "c"] and table.strengths == expected.log_strengths.tolist()
    assert table.comparisons == [3, 3, 2] and report["bt_comparisons"] == 4 and report["bt_items"] == 3
    assert table.true_scores == [(3 + 4 + 3 + 3) / 4, 2.0, 1.0]  # a's mean over the pairs it is in, "ad" too
    assert report["bt_spearman"] == pytest.approx(1.0)
    assert report["bt_pearson"] == pytest.approx(plain_pearson(table.strengths, table.true_scores))
    flipped = [pair_outcome(o.key, o.pair.items, o.pair.scores, mirror(o.prediction)) for o in hand_made()[:4]]
    assert pairwise_summary(flipped)[0]["bt_spearman"] == pytest.approx(-1.0)


def mirror(answer: str) -> str:
    return {"First": "Second", "Second": "First"}.get(answer, answer)


def plain_pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    covariance = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return covariance / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_correlations_are_null_when_undefined_and_absent_without_pairs():
    one_pair = [pair_outcome("1", "ab", (5, 5), "Similar")]
    report, table = pairwise_summary(one_pair)
    assert report["bt_pearson"] is None and report["bt_spearman"] is None and report["bt_items"] == 2
    assert "swap_consistency" not in report
    assert pairwise_summary([Outcome("6", "Which colour?", "red", "red", "red")]) == ({}, None)
    assert table.strengths == [0.0, 0.0] and table.true_scores == [5.0, 5.0]


def test_report_writes_the_strength_table_and_scatter(tmp_path):
    outcomes = hand_made()
    report = summarise(outcomes)
    pairs, table = pairwise_summary(outcomes)
    report.update(pairs, model={"model": "fake", "adapter": None}, data={"shards": "none"}, world_size=1)
    report.update(num_errors=0, errors=[], choice_scoring="a table")
    write_report(tmp_path, report, outcomes, confusion_matrix(outcomes), table)
    rows = list(csv.reader((tmp_path / "bt_strengths.csv").open()))
    assert rows[0] == ["item", "strength", "true_score", "comparisons"]
    assert [row[0] for row in rows[1:]] == ["a", "b", "c"] and [row[2:] for row in rows[1:]] == [
        ["3.25", "3"],
        ["2.0", "3"],
        ["1.0", "2"],
    ]
    assert float(rows[1][1]) == table.strengths[0]
    assert (tmp_path / "bt_scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "report.md").read_text()
    assert "## Pairs" in markdown and "| swap_consistency | 0.6667 |" in markdown and "| bt_items | 3 |" in markdown
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert lines[0]["pair"] == {"items": ["a", "b"], "scores": [3, 2], "swapped_choice": "Second"}
    assert lines[-1]["pair"] is None


# --- a tiny LLaVA on pair shards -------------------------------------------------------------------


def square(side: int) -> ImageData:
    image = Image.new("RGB", (56, 56), "white")
    image.paste((200, 30, 30), (0, 0, side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ImageData(buffer.getvalue(), "png")


@pytest.fixture(scope="module")
def pair_split(tmp_path_factory) -> Path:
    """All 10 pairs of 5 squares, alternately smaller and bigger first; each image is an item scored by its side."""
    split = tmp_path_factory.mktemp("pairs") / "val"
    split.mkdir()
    sides = {f"square{side}.png": side for side in (12, 20, 28, 36, 44)}
    pairs = [(x, y) if n % 2 == 0 else (y, x) for n, (x, y) in enumerate(combinations(sorted(sides), 2))]
    samples = [
        pair_sample(f"pair{n:02d}", (sides[x], sides[y]), (x, y), [square(sides[x]), square(sides[y])])
        for n, (x, y) in enumerate(pairs)
    ]
    write_index(split, "val", [write_shard(split / shard_name(0), samples, 0)], {})
    return split


def test_tiny_model_pair_evaluation_reports_swap_and_bradley_terry(tiny_llava, pair_split, tmp_path, capsys):
    arguments = ["--model", str(tiny_llava), "--shards", str(pair_split), "--max-new-tokens", "2", "--batch-size", "4"]
    assert main([*arguments, "--out", str(tmp_path / "eval")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_pairs"] == report["num_swap_checked"] == report["num_samples"] == 10
    assert 0.0 <= report["swap_consistency"] <= 1.0 and report["bt_items"] == 5 and report["bt_comparisons"] == 10
    assert all(key in printed for key in ("swap_consistency", "bt_pearson", "bt_spearman"))
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(row["pair"]["swapped_choice"] in CHOICES for row in rows)
    assert report["swap_consistency"] == sum(consistent(r["choice"], r["pair"]["swapped_choice"]) for r in rows) / 10
    table = list(csv.DictReader((tmp_path / "eval" / "bt_strengths.csv").open()))
    assert sorted(row["item"] for row in table) == [f"square{side}.png" for side in (12, 20, 28, 36, 44)]
    assert all(row["comparisons"] == "4" for row in table)
    assert (tmp_path / "eval" / "bt_scatter.png").exists()
    assert main([*arguments, "--out", str(tmp_path / "plain"), "--no-swap-check"]) == 0
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert "swap_consistency" not in plain and plain["bt_pearson"] == report["bt_pearson"]
    assert plain["choice_accuracy"] == report["choice_accuracy"]


def pair_records(out: Path) -> dict[str, dict]:
    return {row["key"]: row["pair"] for row in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_gather_the_swapped_choices_and_items(tiny_llava, pair_split, tmp_path):
    arguments = ["--model", str(tiny_llava), "--shards", str(pair_split), "--max-new-tokens", "2", "--batch-size", "3"]
    assert main([*arguments, "--out", str(tmp_path / "one")]) == 0
    command = torchrun_command(2, ROOT / "launch/evaluate.py", [*arguments, "--out", str(tmp_path / "two")])
    result = run_process_group(command, training_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert two["world_size"] == 2 and two["num_pairs"] == two["num_swap_checked"] == 10
    for key in ("swap_consistency", "bt_pearson", "bt_spearman", "bt_items", "bt_comparisons", "choice_accuracy"):
        assert two[key] == one[key], key
    assert pair_records(tmp_path / "two") == pair_records(tmp_path / "one")
    assert (tmp_path / "two" / "bt_strengths.csv").read_text() == (tmp_path / "one" / "bt_strengths.csv").read_text()


# --- the k-fold aggregate --------------------------------------------------------------------------


def write_fold(root: Path, name: str, **metrics) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"num_samples": 10, **metrics}))
    return folder / "report.json"


def test_aggregate_gives_mean_and_sample_std_per_metric(tmp_path, capsys):
    reports = [
        write_fold(tmp_path, "fold0", accuracy=0.5, choice_accuracy=0.6, swap_consistency=0.7, bt_pearson=0.1),
        write_fold(tmp_path, "fold1", accuracy=0.7, choice_accuracy=0.8, swap_consistency=0.9, bt_pearson=None),
        write_fold(tmp_path, "fold2", accuracy=0.9, choice_accuracy=1.0, swap_consistency=0.8, bt_pearson=0.3),
    ]
    assert aggregate_main(["--reports", *map(str, reports), "--out", str(tmp_path / "summary")]) == 0
    summary = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert list(summary["metrics"]) == ["accuracy", "choice_accuracy", "swap_consistency", "bt_pearson"]
    assert summary["metrics"]["accuracy"] == pytest.approx({"mean": 0.7, "std": 0.2, "folds": 3})
    assert summary["metrics"]["swap_consistency"] == pytest.approx({"mean": 0.8, "std": 0.1, "folds": 3})
    assert summary["metrics"]["bt_pearson"] == pytest.approx({"mean": 0.2, "std": math.sqrt(0.02), "folds": 2})
    assert [fold["fold"] for fold in summary["folds"]] == ["fold0", "fold1", "fold2"]
    assert summary["folds"][1] == {
        "fold": "fold1",
        "num_samples": 10,
        "accuracy": 0.7,
        "choice_accuracy": 0.8,
        "swap_consistency": 0.9,
        "bt_pearson": None,
    }
    markdown = (tmp_path / "summary" / "summary.md").read_text()
    assert (
        "| accuracy | 0.7000 | 0.2000 | 3 |" in markdown and "| fold1 | 10 | 0.7000 | 0.8000 | 0.9000 | — |" in markdown
    )
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(0.7)
    single = aggregate_main(["--reports", str(reports[0].parent), "--out", str(tmp_path / "one")])
    assert (
        single == 0
        and json.loads((tmp_path / "one" / "summary.json").read_text())["metrics"]["accuracy"]["std"] is None
    )


def test_aggregate_names_the_report_at_fault(tmp_path, capsys):
    good = write_fold(tmp_path, "fold0", accuracy=0.5, swap_consistency=0.7)
    short = write_fold(tmp_path, "fold1", accuracy=0.6)
    broken = tmp_path / "fold2" / "report.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    text = write_fold(tmp_path, "fold3", accuracy="high")
    out = ["--out", str(tmp_path / "summary")]
    for reports in ([good, short], [good, tmp_path / "fold9" / "report.json"], [good, broken], [text], [good, good]):
        assert aggregate_main(["--reports", *map(str, reports), *out]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0] == "error: fold1 lacks swap_consistency, which fold0 has"
    assert errors[1] == f"error: {tmp_path / 'fold9' / 'report.json'}: no such report"
    assert errors[2].startswith(f"error: {broken}: unreadable report (Expecting property name")
    assert errors[3] == "error: fold3: accuracy is 'high', not a number"
    assert errors[4] == f"error: given more than once: {good}"
    assert not (tmp_path / "summary").exists()
