"""`python -m data_shards pairs`: folds of scored images, then pairs inside each side, sharded per fold."""

import csv
import json
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_shards.cli import main
from data_shards.pairs.errors import PairsError
from data_shards.pairs.folds import assign_folds
from data_shards.pairs.plan import PairSettings, plan_folds
from data_shards.pairs.run import PairsJob, pairs_from_fold_csvs, pairs_from_scores
from data_shards.pairs.sampling import pair_labels, train_pairs, val_pairs
from data_shards.pairs.scores import read_scores
from data_shards.sources.common import SourceOptions
from data_shards.stream import ShardStream, StreamConfig
from data_shards.synthetic import make_dataset
from data_shards.synthetic.scores import side_range, true_score

MARGIN = 0.2


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """60 synthetic scored images (SCUT-FBP5500 layout: labels.txt and Images/)."""
    return make_dataset("scores", tmp_path_factory.mktemp("scored"), n=60, seed=3, image_size=32)


@pytest.fixture(scope="module")
def built(scored, tmp_path_factory) -> Path:
    """The CLI run end to end on the synthetic analogue: 3 folds, 90 train pairs, all val pairs."""
    out = tmp_path_factory.mktemp("built") / "out"
    arguments = ["pairs", "--scores", str(scored.input), "--image-root", str(scored.image_root), "--folds", "3"]
    arguments += ["--train-pairs", "90", "--out", str(out), "--workers", "0", "--no-progress", "--shard-samples", "64"]
    assert main(arguments) == 0
    return out


def job(image_root: Path, out: Path, **overrides) -> PairsJob:
    return PairsJob(image_root=image_root, out=out, workers=0, progress=False, **overrides)


def streamed(split_dir: Path) -> list:
    return list(ShardStream(split_dir, config=StreamConfig(shuffle=False, on_corrupt="fail"), rank=0, world_size=1))


def unordered(pairs) -> set[frozenset]:
    return {frozenset(pair) for pair in zip(pairs.first.tolist(), pairs.second.tolist())}


def test_folds_are_disjoint_covering_and_stratified():
    scores = np.random.default_rng(0).gamma(4.0, 0.7, size=503)
    assignment = assign_folds(scores, folds=5, bins=10, seed=1)
    sizes = np.bincount(assignment, minlength=5)
    assert sizes.sum() == len(scores) and sizes.max() - sizes.min() <= 1
    rank = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    for score_bin in range(10):
        per_fold = np.bincount(assignment[rank * 10 // len(scores) == score_bin], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    means = [scores[assignment == fold].mean() for fold in range(5)]
    assert max(means) - min(means) < 0.1 * scores.std()
    assert (assign_folds(scores, 5, 10, seed=1) == assignment).all()
    assert (assign_folds(scores, 5, 10, seed=2) != assignment).any()


def test_train_pairs_are_balanced_distinct_and_labelled_from_scores():
    scores = np.random.default_rng(1).uniform(1, 5, size=70)
    pairs = train_pairs(scores, 100, MARGIN, np.random.default_rng(0), "fold 1 train")
    assert pairs.counts() == {"First": 34, "Second": 33, "Similar": 33}
    assert len(unordered(pairs)) == 100 and (pairs.first != pairs.second).all()
    difference = scores[pairs.first] - scores[pairs.second]
    assert (np.abs(difference[pairs.labels == "Similar"]) < MARGIN).all()
    assert (difference[pairs.labels == "First"] >= MARGIN).all()
    assert (difference[pairs.labels == "Second"] <= -MARGIN).all()


def test_pair_labels_margin_and_ties():
    labels = pair_labels(np.array([3.0, 3.0, 3.3, 2.0, 2.0]), np.array([3.0, 3.1, 3.0, 2.2, 2.3]), MARGIN)
    assert labels.tolist() == ["Similar", "Similar", "First", "Second", "Second"]


def test_a_class_short_of_its_quota_is_an_error_with_counts():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.05])  # one Similar pair among 15
    with pytest.raises(PairsError, match=r"fold 2 train: 9 balanced pairs need 3 Similar.*give 1 Similar.*at most 5"):
        train_pairs(scores, 9, MARGIN, np.random.default_rng(0), "fold 2 train")
    assert train_pairs(scores, 5, MARGIN, np.random.default_rng(0), "fold 2 train").counts()["Similar"] == 1


def test_val_pairs_all_or_a_sample_without_repeats():
    scores = np.random.default_rng(2).uniform(1, 5, size=17)
    every = val_pairs(scores, None, MARGIN, np.random.default_rng(0), "val")
    assert unordered(every) == {frozenset(pair) for pair in combinations(range(17), 2)}
    assert len(every.first) == comb(17, 2)
    assert (every.labels == pair_labels(scores[every.first], scores[every.second], MARGIN)).all()
    sample = val_pairs(scores, 50, MARGIN, np.random.default_rng(0), "val")
    assert len(unordered(sample)) == 50
    with pytest.raises(PairsError, match="more than the 136 pairs"):
        val_pairs(scores, 137, MARGIN, np.random.default_rng(0), "val")


def test_plan_pairs_stay_inside_their_side(scored):
    images = read_scores(scored.input)
    plans = plan_folds(images, PairSettings(folds=3, train_pairs=60, val_pairs=40))
    held_out = [set(plan.images["val"].tolist()) for plan in plans]
    assert set().union(*held_out) == set(range(len(images))) and sum(map(len, held_out)) == len(images)
    for plan in plans:
        for side in ("train", "val"):
            members = set(plan.images[side].tolist())
            assert set(plan.pairs[side].first.tolist()) | set(plan.pairs[side].second.tolist()) <= members
        assert not set(plan.images["train"].tolist()) & set(plan.images["val"].tolist())
        assert len(plan.pairs["val"].first) == 40


def test_synthetic_scores_show_their_score(scored):
    lines = scored.input.read_text().splitlines()
    assert scored.format == "scores" and scored.num_records == len(lines) == 60
    names, scores = zip(*(line.split() for line in lines))
    assert sorted(path.name for path in scored.image_root.iterdir()) == sorted(names)
    scores = np.asarray(scores, dtype=float)
    assert scores.min() >= 1 and scores.max() <= 5
    sides = []
    for name in names:
        pixels = np.asarray(Image.open(scored.image_root / name).convert("RGB"), dtype=int)
        assert pixels.shape == (32, 32, 3)
        sides.append(np.sqrt(((255 - pixels).max(axis=2) > 100).sum()))
    ranks = [np.argsort(np.argsort(values)) for values in (np.asarray(sides), scores)]
    assert np.corrcoef(*ranks)[0, 1] > 0.95
    low, high = side_range(56)
    assert (true_score(low, 56), true_score(high, 56)) == (1.0, 5.0) and (low, high) == (11, 50)


def test_cli_shards_read_back_with_their_extras(built, scored):
    scores = {image.name: image.score for image in read_scores(scored.input)}
    summary = json.loads((built / "folds.json").read_text())
    assert summary["guarantee"]["train_val_disjoint"] and summary["guarantee"]["every_image_in_exactly_one_val_fold"]
    val_names = [set(summary["folds"][f"fold{k}"]["val"]["names"]) for k in (0, 1, 2)]
    assert set().union(*val_names) == set(scores) and sum(map(len, val_names)) == 60
    for number in (0, 1, 2):
        sides = {}
        for side in ("train", "val"):
            samples = streamed(built / f"fold{number}" / side)
            for sample in samples:
                extra = sample.extra
                assert extra["choices"] == ["First", "Second", "Similar"] and len(sample.images) == 2
                assert [extra["score1"], extra["score2"]] == [scores[item] for item in extra["items"]]
                label = pair_labels(np.array([extra["score1"]]), np.array([extra["score2"]]), MARGIN)[0]
                assert sample.label == label == sample.answers()[0]
                assert sample.turns[0].text == SourceOptions.pairs_question
            sides[side] = {item for sample in samples for item in sample.extra["items"]}
            counted = summary["folds"][f"fold{number}"][side]["pairs"]
            assert counted["rows"] == counted["written"] == len(samples) and counted["rejected"] == 0
        assert not sides["train"] & sides["val"]
        assert sides["val"] == val_names[number]
        assert len(streamed(built / f"fold{number}" / "val")) == comb(len(sides["val"]), 2)
        assert summary["folds"][f"fold{number}"]["train"]["pairs"]["labels"] == {
            "First": 30,
            "Second": 30,
            "Similar": 30,
        }


def test_report_counts_reconcile_per_fold(built):
    for number in (0, 1, 2):
        report = json.loads((built / f"fold{number}" / "report.json").read_text())
        assert report["read"] == report["written"] + report["rejected"]
        for side, counts in report["sides"].items():
            assert counts["rows"] == counts["written"] + counts["rejected"]
            assert counts["written"] == report["splits"][side]["samples"]
        rows = {
            side: len((built / f"fold{number}" / f"pairs_{side}.csv").read_text().splitlines()) - 1
            for side in report["sides"]
        }
        assert rows == {side: counts["rows"] for side, counts in report["sides"].items()}


def write_scores_file(tmp_path: Path, text: str, name: str = "labels.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.jpg 3.1\nb.jpg 2.0\na.jpg 4.0\n", r"labels.txt:3: duplicate image 'a.jpg' \(first at .*labels.txt:1\)"),
        ("a.jpg 3.1\n\nb.jpg high\n", r"labels.txt:3: score 'high' of 'b.jpg' is not a number"),
        ("a.jpg 3.1 extra\n", r"labels.txt:1: expected an image name and a score"),
        ("a.jpg nan\n", r"labels.txt:1: score 'nan' of 'a.jpg' is not finite"),
        ("\n\n", r"labels.txt: no scores"),
    ],
)
def test_bad_score_files_name_the_line(tmp_path, text, message):
    with pytest.raises(PairsError, match=message):
        read_scores(write_scores_file(tmp_path, text))


def test_csv_scores_and_their_errors(tmp_path):
    path = write_scores_file(tmp_path, "image,score\nb.jpg,2.5\na.jpg,4\n", "scores.csv")
    assert [(image.name, image.score) for image in read_scores(path)] == [("a.jpg", 4.0), ("b.jpg", 2.5)]
    with pytest.raises(PairsError, match=r"scores.csv:3: score 'x'"):
        read_scores(write_scores_file(tmp_path, "image,score\nb.jpg,2.5\na.jpg,x\n", "scores.csv"))
    with pytest.raises(PairsError, match=r"CSV header lacks \['score'\]"):
        read_scores(write_scores_file(tmp_path, "image,rating\nb.jpg,2.5\n", "scores.csv"))


def test_missing_images_are_named_before_anything_is_written(scored, tmp_path):
    lines = scored.input.read_text().splitlines()
    path = write_scores_file(tmp_path, "\n".join(lines + ["gone.jpg 3.0", "../up.jpg 2.0"]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(
        PairsError, match=r"(?s)images missing under .*\(2\):.*:62: '../up.jpg' points outside.*:61: 'gone"
    ):
        pairs_from_scores(path, PairSettings(folds=3, train_pairs=30), job(scored.image_root, out))
    assert not out.exists()


def write_fold_csv(path: Path, rows: list[tuple[str, str]], scores: dict[str, float]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img1", "img2", "score1", "score2", "label"])
        for one, two in rows:
            label = pair_labels(np.array([scores[one]]), np.array([scores[two]]), MARGIN)[0]
            writer.writerow([one, two, scores[one], scores[two], label])


def seed_csvs(folder: Path, scored, leak: int = 0) -> tuple[str, str]:
    """LMOL-style train_fold{k}_*.csv / eval_fold{k}_*.csv over 2 folds of 30 images; each train CSV pairs its
    images off (15 pairs), eval holds all 435 pairs; the first `leak` val images are also paired in train."""
    scores = {image.name: image.score for image in read_scores(scored.input)}
    names = sorted(scores)
    folder.mkdir()
    for number, val in ((1, names[:30]), (2, names[30:])):
        train = [name for name in names if name not in val] + val[:leak]
        write_fold_csv(folder / f"train_fold{number}_pairs.csv", list(zip(train[::2], train[1::2])), scores)
        write_fold_csv(folder / f"eval_fold{number}_435.csv", list(combinations(val, 2)), scores)
    return str(folder / "train_fold{k}_*.csv"), str(folder / "eval_fold{k}_*.csv")


def test_seed_fold_csvs_are_sharded_per_fold(scored, tmp_path):
    patterns = seed_csvs(tmp_path / "seed", scored)
    summary = pairs_from_fold_csvs(*patterns, job(scored.image_root, tmp_path / "out"))
    assert summary["guarantee"]["every_image_in_exactly_one_val_fold"]
    assert summary["pairs"] == {"rows": 2 * (15 + 435), "written": 900, "rejected": 0}
    val = streamed(tmp_path / "out" / "fold1" / "val")  # the second, eval_fold2_435.csv
    assert len(val) == 435 and val[0].extra["items"] == ["s00030.jpg", "s00031.jpg"]


def test_leakage_in_seed_csvs_is_refused_naming_the_images(scored, tmp_path):
    patterns = seed_csvs(tmp_path / "seed", scored, leak=12)
    with pytest.raises(PairsError, match=r"fold 0: 12 images on both .*: s00000.jpg, s00001.jpg, .*, \.\.\."):
        pairs_from_fold_csvs(*patterns, job(scored.image_root, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    summary = pairs_from_fold_csvs(*patterns, job(scored.image_root, tmp_path / "out", allow_leakage=True))
    assert not summary["guarantee"]["train_val_disjoint"] and summary["allow_leakage"]
    assert summary["guarantee"]["leaked_images"] == {"fold0": 12, "fold1": 12}
    assert len(summary["guarantee"]["leaked_examples"]["fold0"]) == 10


def test_byte_identical_copies_count_as_leakage(scored, tmp_path):
    root = tmp_path / "Images"
    root.mkdir()
    for path in scored.image_root.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    (root / "copy.jpg").write_bytes((root / "s00000.jpg").read_bytes())
    path = write_scores_file(tmp_path, scored.input.read_text() + "copy.jpg 1.5\n")
    images = read_scores(path)
    scores, names = np.asarray([image.score for image in images]), [image.name for image in images]
    apart = lambda seed: (
        len(set(assign_folds(scores, 3, 10, seed)[[names.index("copy.jpg"), names.index("s00000.jpg")]])) == 2
    )
    settings = PairSettings(folds=3, train_pairs=30, seed=next(seed for seed in range(50) if apart(seed)))
    with pytest.raises(PairsError, match=r"on both the train and the val side: copy.jpg = s00000.jpg"):
        pairs_from_scores(path, settings, job(root, tmp_path / "out"))


def test_bad_fold_csvs_and_options(scored, tmp_path):
    train, val = seed_csvs(tmp_path / "seed", scored)
    (tmp_path / "seed" / "eval_fold2_435.csv").unlink()
    with pytest.raises(PairsError, match=r"has folds \[1, 2\], .* has \[1\]"):
        pairs_from_fold_csvs(train, val, job(scored.image_root, tmp_path / "out"))
    with pytest.raises(PairsError, match="must hold"):
        pairs_from_fold_csvs(train.replace("{k}", "1"), val, job(scored.image_root, tmp_path / "out"))
    arguments = ["pairs", "--fold-csvs", train, val, "--image-root", str(scored.image_root), "--out", str(tmp_path)]
    assert main([*arguments, "--folds", "3"]) == 2


def test_output_folder_must_be_empty(built, scored):
    with pytest.raises(FileExistsError, match="not empty"):
        pairs_from_scores(scored.input, PairSettings(folds=3, train_pairs=30), job(scored.image_root, built))
