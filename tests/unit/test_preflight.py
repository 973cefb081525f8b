"""Preflight: every input and output path checked at once, before the model loads, each named as given."""

import shutil

import pytest
from conftest import ROOT
from huggingface_hub import constants

from data_shards.index import INDEX_NAME
from trainer.config.schema import ConfigError, load
from trainer.train.cli import main, parser
from trainer.train.preflight import preflight

ZERO2 = ROOT / "configs/deepspeed/zero2.json"


@pytest.fixture
def valid(tiny_llava, color_shards, tmp_path):
    """Overrides of a config that passes preflight; a test replaces one key to break it."""
    return {
        "model.path": tiny_llava,
        "data.train": color_shards / "train",
        "data.val": color_shards / "val",
        "deepspeed.config": ZERO2,
        "train.output_dir": tmp_path / "run",
    }


def problems(overrides: dict, **changes) -> list[str]:
    """Preflight's problems for `overrides` with `changes` (keys with '_' for '.'); [] when it passes."""
    values = {**overrides, **{key.replace("_", ".", 1): value for key, value in changes.items()}}
    config = load(None, [f"{key}={value}" for key, value in values.items()])
    try:
        preflight(config)
    except ConfigError as error:
        assert str(error).startswith("invalid configuration:")
        return error.problems
    return []


def test_a_valid_config_passes(valid):
    assert problems(valid) == []
    assert problems(valid, checkpoint_resume="none") == []
    assert not (valid["train.output_dir"]).exists()  # preflight creates nothing


def test_missing_model_folder_is_named(valid, tmp_path):
    absent = tmp_path / "models" / "absent"
    assert problems(valid, model_path=absent) == [f"model.path: {absent} does not exist"]
    assert problems(valid, model_path="./no-such-model") == ["model.path: ./no-such-model does not exist"]
    assert "~ is not expanded" in problems(valid, model_path="~/no-such-model")[0]


def test_model_folder_needs_config_tokenizer_and_processor(valid, tiny_llava, tmp_path):
    copy = shutil.copytree(tiny_llava, tmp_path / "model")
    (copy / "config.json").unlink()
    assert problems(valid, model_path=copy) == [f"model.path: {copy} has no config.json"]
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_llava / "config.json", bare)
    found = problems(valid, model_path=bare)
    assert [p.split(" (")[0] for p in found] == [
        f"model.path: {bare} has no tokenizer",
        f"model.path: {bare} has no processor config",
    ]
    assert "tokenizer_config.json" in found[0] and "preprocessor_config.json" in found[1]


def test_hub_id_needs_the_cache_when_offline(valid, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert problems(valid, model_path="some-org/some-model") == []  # online: from_pretrained downloads it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = problems(valid, model_path="some-org/some-model")
    assert len(found) == 1 and found[0].startswith("model.path: some-org/some-model is neither a local folder nor in")
    snapshot = tmp_path / "hub" / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert problems(valid, model_path="some-org/some-model") == []  # cached: fine offline


def test_missing_train_split_names_the_path_as_given(valid, tmp_path):
    assert problems(valid, data_train="/nope") == ["data.train: /nope does not exist"]
    absent = tmp_path / "absent-train"
    found = problems(valid, data_train=absent)
    assert found == [f"data.train: {absent} does not exist"] and INDEX_NAME not in found[0]


def test_missing_val_split_is_named(valid, tmp_path):
    absent = tmp_path / "absent-val"
    assert problems(valid, data_val=absent) == [f"data.val: {absent} does not exist"]
    assert problems(valid, data_val="") == []  # no evaluation


def test_split_folder_without_index(valid, tmp_path):
    empty = tmp_path / "empty-split"
    empty.mkdir()
    assert problems(valid, data_train=empty) == [f"data.train: {empty} has no {INDEX_NAME} (build the shards first)"]


def test_index_that_is_not_json(valid, tmp_path):
    split = tmp_path / "broken"
    split.mkdir()
    (split / INDEX_NAME).write_text('{"shards": [\n oops')
    found = problems(valid, data_val=split)
    assert len(found) == 1 and found[0].startswith(f"data.val: {split / INDEX_NAME}: corrupt shard index")
    assert "line 2" in found[0]


def test_index_of_another_schema(valid, tmp_path):
    split = tmp_path / "old"
    split.mkdir()
    (split / INDEX_NAME).write_text('{"schema_version": -1, "shards": []}')
    found = problems(valid, data_train=split)
    assert len(found) == 1 and found[0].startswith(f"data.train: {split / INDEX_NAME}: schema -1")


def test_brace_source_needs_an_index(valid, color_shards, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(color_shards / "train" / "shard-000000.tar", loose)
    pattern = f"{loose}/shard-{{000000..000001}}.tar"
    assert problems(valid, data_train=pattern) == [
        f"data.train: {pattern} needs data.index (no {INDEX_NAME} next to its shards: {loose / INDEX_NAME} "
        "does not exist)"
    ]
    missing_index = tmp_path / "elsewhere" / INDEX_NAME
    assert problems(valid, data_train=pattern, data_index=missing_index) == [
        f"data.index: {missing_index} does not exist (the index of data.train={pattern})"
    ]
    sibling = f"{color_shards / 'train'}/shard-{{000000..000001}}.tar"
    assert problems(valid, data_train=sibling) == []  # the stream finds the index next to local shards


def test_pipe_source_needs_an_index(valid, color_shards):
    source = f"pipe:cat {color_shards / 'train'}/shard-{{000000..000001}}.tar"
    found = problems(valid, data_train=source)
    assert found == [
        f"data.train: {source} is a pipe: source; set data.index (a path, or a pipe: command printing {INDEX_NAME})"
    ]
    assert problems(valid, data_train=source, data_index=color_shards / "train" / INDEX_NAME) == []


def test_split_whose_shards_are_all_missing(valid, color_shards, tmp_path):
    split = tmp_path / "no-shards"
    split.mkdir()
    shutil.copy(color_shards / "train" / INDEX_NAME, split)
    found = problems(valid, data_train=split)
    assert len(found) == 1 and found[0].startswith(f"data.train: {split}: no readable shard (")


def test_bad_deepspeed_json_gives_line_and_column(valid, tmp_path):
    broken = tmp_path / "ds.json"
    broken.write_text('{\n  "zero_optimization": {"stage": 2},\n  "gradient_clipping": \n}\n')
    assert problems(valid, deepspeed_config=broken) == [
        f"deepspeed.config: {broken} is not valid JSON: Expecting value at line 4, column 1"
    ]
    absent = tmp_path / "absent.json"
    assert problems(valid, deepspeed_config=absent) == [f"deepspeed.config: {absent} does not exist"]
    broken.write_text("[1, 2]")
    assert problems(valid, deepspeed_config=broken) == [
        f"deepspeed.config: {broken} must hold a JSON object, not a list"
    ]


def test_output_dir_that_is_a_file(valid, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.write_text("not a folder")
    assert problems(valid, train_output_dir=occupied) == [f"train.output_dir: {occupied} is a file, not a folder"]
    below = occupied / "run"
    assert problems(valid, train_output_dir=below) == [
        f"train.output_dir: {below} cannot be created: {occupied} is a file"
    ]


def test_resume_path_must_exist_and_be_complete(valid, tmp_path):
    absent = tmp_path / "checkpoints" / "step00000008"
    assert problems(valid, checkpoint_resume=absent) == [f"checkpoint.resume: {absent} does not exist"]
    absent.mkdir(parents=True)
    found = problems(valid, checkpoint_resume=absent)
    assert len(found) == 1 and found[0].startswith(f"checkpoint.resume={absent}:")
    assert "not a complete checkpoint" in found[0]
    (absent / "complete").write_text("")
    assert problems(valid, checkpoint_resume=absent) == []


def test_every_problem_is_reported_in_one_error(valid, tmp_path):
    occupied = tmp_path / "file"
    occupied.write_text("")
    found = problems(
        valid,
        model_path=tmp_path / "m",
        data_train="/nope",
        data_val=tmp_path / "v",
        deepspeed_config=tmp_path / "ds.json",
        train_output_dir=occupied,
        checkpoint_resume=tmp_path / "c",
    )
    assert [p.split(":")[0] for p in found] == [
        "model.path",
        "data.train",
        "data.val",
        "deepspeed.config",
        "train.output_dir",
        "checkpoint.resume",
    ]
    assert "data.train: /nope does not exist" in found


def overrides_for(valid: dict, **changes) -> list[str]:
    values = {**valid, **{key.replace("_", ".", 1): value for key, value in changes.items()}}
    return [f"{key}={value}" for key, value in values.items()]


def test_main_exits_2_naming_the_path(valid, capsys):
    assert main(overrides_for(valid, data_train="/nope")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration:") and "data.train: /nope does not exist" in err
    assert "Traceback" not in err


def test_options_and_overrides_in_any_order(valid, tmp_path, capsys):
    recipe = ROOT / "configs/demo.yaml"
    args = parser().parse_intermixed_args(
        ["--config", str(recipe), "optimizer.lr=1e-4", "--resume", "auto", "train.max_steps=10", "--local_rank=1"]
    )
    assert args.config == recipe and args.resume == "auto" and args.local_rank == 1
    assert args.overrides == ["optimizer.lr=1e-4", "train.max_steps=10"]
    absent = tmp_path / "no-checkpoint"
    first, *rest = overrides_for(valid)
    assert (
        main(
            [
                "--local_rank",
                "0",
                first,
                "--config",
                str(recipe),
                *rest[:2],
                "--resume",
                str(absent),
                *rest[2:],
                "train.max_steps=10",
            ]
        )
        == 2
    )  # parsed (no usage error, exit 2 from preflight)
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert err.strip().splitlines()[1:] == [f"  checkpoint.resume: {absent} does not exist"]


def test_a_missing_chat_template_file_is_named(tiny_llava, color_shards, tmp_path):
    config = load(
        None,
        [
            f"model.path={tiny_llava}",
            f"data.train={color_shards / 'train'}",
            f"train.output_dir={tmp_path / 'run'}",
            "model.chat_template=/no/template.jinja",
        ],
    )
    with pytest.raises(ConfigError, match="model.chat_template: /no/template.jinja is not a file"):
        preflight(config)
