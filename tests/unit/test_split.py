"""Splits are seeded, sized as asked, stratified by label, and never leak a group."""

from collections import Counter

import pytest

from data_shards.split import SplitError, SplitSpec, assign_splits, explicit_groups, image_groups


def spec(text="train=0.8,val=0.2", by="random", **kwargs):
    return SplitSpec.parse(text, by, **kwargs)


def test_random_split_sizes_and_reproducibility():
    labels = [None] * 101
    groups = explicit_groups([None] * 101)
    first = assign_splits(labels, groups, spec(), seed=3)
    assert Counter(first) == {"train": 81, "val": 20}
    assert first == assign_splits(labels, groups, spec(), seed=3)
    assert first != assign_splits(labels, groups, spec(), seed=4)


def test_random_split_is_the_fixed_reference():
    # seed 3 permutes range(10) to [9, 6, 0, 2, 1, 4, 7, 5, 3, 8]; 10 x 0.2 = 2 items go to val: the last two, 3 and 8
    names = assign_splits([None] * 10, explicit_groups([None] * 10), spec(), seed=3)
    assert names == ["train", "train", "train", "val", "train", "train", "train", "train", "val", "train"]


def test_stratified_split_keeps_class_proportions():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    names = assign_splits(labels, explicit_groups([None] * 100), spec(by="label"), seed=0)
    val = Counter(label for label, name in zip(labels, names) if name == "val")
    assert val == {"a": 10, "b": 6, "c": 4}


def test_stratified_split_is_the_fixed_reference():
    # a at 0 1 5 6 8, b at 2 3 4 7 9; 5 x 0.4 = 2 of each go to val. seed 0 permutes a's to [5, 8, 6, 0, 1] (val: the
    # last two, 0 and 1), then b's to [9, 3, 4, 2, 7] (val: 2 and 7)
    labels = list("aabbbaabab")
    names = assign_splits(labels, explicit_groups([None] * 10), spec("train=0.6,val=0.4", by="label"), seed=0)
    assert names == ["val", "val", "val", "train", "train", "train", "train", "val", "train", "train"]


def test_stratified_split_needs_labels():
    with pytest.raises(SplitError, match="label"):
        assign_splits([None, "a"], ["g0", "g1"], spec(by="label"), seed=0)


def test_group_split_never_puts_a_group_in_two_splits():
    groups = [f"video{i // 7}" for i in range(140)]
    names = assign_splits([None] * 140, groups, spec(by="group"), seed=1)
    for group in set(groups):
        assert len({n for g, n in zip(groups, names) if g == group}) == 1
    assert 20 <= Counter(names)["val"] <= 35


def test_group_split_is_the_fixed_reference():
    # targets 7 train / 3 val; seed 1 visits v4 v0 v1 v2 v3, each to the part furthest below its target: v4, v0 and
    # v1 (a 3/3 tie goes to the first part) to train, v2 (3 items) to val, v3 to train: 7 and 3, as targeted
    groups = ["v0", "v0", "v1", "v2", "v2", "v2", "v3", "v1", "v4", "v4"]
    names = assign_splits([None] * 10, groups, spec("train=0.7,val=0.3", by="group"), seed=1)
    assert names == ["train", "train", "train", "val", "val", "val", "train", "train", "train", "train"]


def test_image_groups_join_samples_sharing_any_image():
    hashes = [["x"], ["y"], ["x", "z"], ["z"], ["w"]]
    groups = image_groups(hashes, [None] * 5)
    assert groups[0] == groups[2] == groups[3]
    assert len({groups[0], groups[1], groups[4]}) == 3


def test_kfold_holds_out_each_sample_exactly_once():
    labels = ["a", "b"] * 25
    groups = explicit_groups([None] * 50)
    held_out = Counter()
    for fold in range(5):
        names = assign_splits(labels, groups, spec(by="label", folds=5, fold=fold), seed=0)
        assert Counter(names)["val"] == 10
        held_out.update(i for i, name in enumerate(names) if name == "val")
    assert held_out == Counter(range(50))


def test_kfold_is_the_fixed_reference():
    # seed 0 permutes range(6) to [3, 2, 5, 4, 0, 1], cut into 3 equal parts {2, 3} {4, 5} {0, 1}: fold k holds out
    # part k, the same partition for every fold
    groups = explicit_groups([None] * 6)
    folds = [assign_splits([None] * 6, groups, spec("train=1", folds=3, fold=k), seed=0) for k in range(3)]
    assert folds == [
        ["train", "train", "val", "val", "train", "train"],
        ["train", "train", "train", "train", "val", "val"],
        ["val", "val", "train", "train", "train", "train"],
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("train=0.9,val=0.2", "sum to 1"),
        ("train=0.5,train=0.5", "distinct"),
        ("train", "NAME=FRACTION"),
    ],
)
def test_bad_split_specs_are_refused(text, message):
    with pytest.raises(SplitError, match=message):
        SplitSpec.parse(text)


def test_bad_fold_is_refused():
    with pytest.raises(SplitError, match="fold"):
        SplitSpec.parse("train=1", folds=5, fold=5)
