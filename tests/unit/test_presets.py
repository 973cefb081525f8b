"""Presets: every shipped one valid alone and under every recipe, layered preset < recipe < override, clear refusals."""

import pytest
import yaml
from conftest import ROOT

from trainer.config.fields import flatten, load_yaml
from trainer.config.presets import PRESET_DIR, available
from trainer.config.schema import ConfigError, load, to_dict
from trainer.train import cli

PRESETS = ["development", "high-quality", "memory-efficient", "production", "quick-test"]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
REQUIRED = ["model.path=m", "data.train=d"]


def test_the_five_presets_are_shipped_each_saying_what_it_is_for():
    assert available() == PRESETS
    for name in PRESETS:
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 30, name


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses_validates_and_is_recorded(name):
    config = load(None, [*REQUIRED, f"train.preset={name}"])
    resolved = flatten(to_dict(config))
    assert resolved["train.preset"] == name
    for key, value in flatten(load_yaml(PRESET_DIR / f"{name}.yaml")).items():
        assert resolved[key] == value, key
    assert (ROOT / config.deepspeed.config).is_file()


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_preset_validates_under_every_recipe(recipe, name):
    assert load(recipe, [f"train.preset={name}"]).train.preset == name


def write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def test_order_is_preset_then_recipe_then_override(tmp_path):
    preset = write(tmp_path / "mine.yaml", {"optimizer": {"lr": 0.1}, "lora": {"r": 4}, "eval": {"max_batches": 7}})
    recipe = write(tmp_path / "recipe.yaml", {"model": {"path": "m"}, "data": {"train": "d"}, "optimizer": {"lr": 0.2}})
    alone = load(None, [*REQUIRED, f"train.preset={preset}"])
    assert (alone.optimizer.lr, alone.lora.r, alone.eval.max_batches) == (0.1, 4, 7)
    under = load(recipe, [f"train.preset={preset}"])
    assert (under.optimizer.lr, under.lora.r, under.eval.max_batches) == (0.2, 4, 7)
    over = load(recipe, [f"train.preset={preset}", "optimizer.lr=0.3", "lora.r=2"])
    assert (over.optimizer.lr, over.lora.r, over.eval.max_batches) == (0.3, 2, 7)
    assert over.train.preset == str(preset)


def test_a_recipe_may_name_its_preset_and_an_override_replaces_it(tmp_path):
    recipe = write(
        tmp_path / "r.yaml", {"model": {"path": "m"}, "data": {"train": "d"}, "train": {"preset": "quick-test"}}
    )
    assert load(recipe).train.max_steps == 20
    replaced = load(recipe, ["train.preset=memory-efficient"])
    assert (replaced.train.preset, replaced.train.max_steps, replaced.deepspeed.zero_stage) == (
        "memory-efficient",
        0,
        3,
    )


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="train.preset: unknown preset 'fast'; available: development, high-quality"):
        load(None, [*REQUIRED, "train.preset=fast"])


def test_bad_preset_files_are_refused_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"train.preset: .*missing.yaml: no such config file"):
        load(None, [*REQUIRED, f"train.preset={tmp_path / 'missing.yaml'}"])
    typo = write(tmp_path / "typo.yaml", {"optimizer": {"learning_rate": 1.0}})
    with pytest.raises(ConfigError, match=r"typo.yaml sets optimizer.learning_rate, which is not a config key"):
        load(None, [*REQUIRED, f"train.preset={typo}"])
    nested = write(tmp_path / "nested.yaml", {"train": {"preset": "quick-test"}})
    with pytest.raises(ConfigError, match=r"nested.yaml sets train.preset itself \(presets do not nest\)"):
        load(None, [*REQUIRED, f"train.preset={nested}"])


def test_train_cli_takes_preset_and_refuses_an_unknown_one(capsys):
    args = cli.parser().parse_intermixed_args(["model.path=m", "--preset", "quick-test", "data.train=d"])
    assert args.preset == "quick-test" and args.overrides == REQUIRED
    assert cli.main(["--preset", "fast", *REQUIRED]) == 2
    assert "unknown preset 'fast'; available: development" in capsys.readouterr().err
    assert "preset < YAML < overrides" in cli.parser().format_help()
