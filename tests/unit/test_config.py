"""The training config: typed keys, all errors at once, every shipped recipe valid, DeepSpeed JSON filled."""

import json

import pytest
import yaml
from conftest import ROOT

from trainer.config import deepspeed_json
from trainer.config.fields import to_dict
from trainer.config.schema import ConfigError, TrainConfig, help_text, load

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
REQUIRED = ["model.path=m", "data.train=d"]


def test_overrides_are_typed():
    config = load(
        None,
        [
            *REQUIRED,
            "optimizer.lr=2e-5",
            "train.micro_batch_size=4",
            "lora.enabled=true",
            "optimizer.betas=[0.9, 0.95]",
            "tracking.tags=[a, b]",
        ],
    )
    assert config.optimizer.lr == 2e-5 and config.train.micro_batch_size == 4 and config.lora.enabled
    assert config.optimizer.betas == [0.9, 0.95] and config.tracking.tags == ["a", "b"]


def test_every_problem_is_reported_at_once_naming_each_key():
    with pytest.raises(ConfigError) as caught:
        load(
            None,
            [
                "train.lr=1",
                "model.dtype=float8",
                "train.micro_batch_size=many",
                "quant.load_in_4bit=true",
                "lora.r=0",
                "nonsense",
            ],
        )
    message = str(caught.value)
    for expected in (
        "train.lr: unknown key (did you mean optimizer.lr?)",
        "model.dtype: 'float8' is not one of",
        "train.micro_batch_size: 'many' is not int",
        "'nonsense': overrides look like",
    ):
        assert expected in message
    with pytest.raises(ConfigError) as caught:
        load(None, ["quant.load_in_4bit=true", "lora.r=0"])
    assert {p.split(":")[0] for p in caught.value.problems} >= {
        "model.path",
        "data.train",
        "quant.load_in_4bit",
        "lora.r",
    }


def test_yaml_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": "x"}, "data": {"train": "y"}, "optimizer": {"lr": 0.1}}))
    assert load(recipe).optimizer.lr == 0.1
    assert load(recipe, ["optimizer.lr=0.5"]).optimizer.lr == 0.5
    recipe.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(recipe)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses(recipe):
    config = load(recipe)
    assert (ROOT / config.deepspeed.config).is_file()


def test_help_lists_every_key():
    text = help_text()
    for key in ("model.path", "optimizer.projector_lr", "lora.target_modules", "checkpoint.resume", "tracking.wandb"):
        assert key in text


def test_secrets_are_redacted():
    config = load(None, [*REQUIRED, "tracking.api_key=sekrit"])
    assert to_dict(config, redact=True)["tracking"]["api_key"] == "***"
    assert to_dict(config)["tracking"]["api_key"] == "sekrit"


def test_deepspeed_auto_fields_are_filled():
    config = load(
        None,
        [
            *REQUIRED,
            "train.micro_batch_size=4",
            "train.grad_accum=2",
            "train.precision=bf16",
            f"deepspeed.config={ROOT}/configs/deepspeed/zero3.json",
        ],
    )
    resolved = deepspeed_json.resolve(config, world_size=8, hidden_size=64)
    assert resolved["train_batch_size"] == 64 and resolved["train_micro_batch_size_per_gpu"] == 4
    assert resolved["gradient_accumulation_steps"] == 2
    assert resolved["bf16"]["enabled"] is True and resolved["fp16"]["enabled"] is False
    assert resolved["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert "auto" not in json.dumps(resolved)


def test_global_batch_mismatch_names_every_factor():
    config = load(None, [*REQUIRED, "train.micro_batch_size=4", "train.grad_accum=2", "train.global_batch_size=48"])
    with pytest.raises(
        ConfigError, match=r"micro_batch_size 4 × grad_accum 2 × world size 4 = 32; grad_accum=3 would fit"
    ):
        deepspeed_json.resolve(config, world_size=4, hidden_size=64)


def test_user_json_contradicting_the_config_is_refused(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 1}}))
    config = load(None, [*REQUIRED, "train.micro_batch_size=4", f"deepspeed.config={user}"])
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=8 contradicts"):
        deepspeed_json.resolve(config, 1, 64)
    config = load(None, [*REQUIRED, "train.micro_batch_size=8", f"deepspeed.config={user}", "deepspeed.offload=true"])
    resolved = deepspeed_json.resolve(config, 1, 64)
    assert resolved["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_dataclass_defaults_are_valid():
    assert isinstance(load(None, REQUIRED), TrainConfig)


@pytest.mark.parametrize("fraction", ["0", "-0.5", "1.5"])
def test_sample_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ConfigError, match=rf"data.sample_fraction: must be in \(0, 1\], got {float(fraction)}"):
        load(None, [*REQUIRED, f"data.sample_fraction={fraction}"])
    assert load(None, [*REQUIRED, "data.sample_fraction=1"]).data.sample_fraction == 1.0


def test_strips_per_batch_must_divide_the_micro_batch_and_the_cache_be_positive():
    with pytest.raises(ConfigError, match=r"data.strips_per_batch: must divide train.micro_batch_size \(4\), got 3"):
        load(None, [*REQUIRED, "train.micro_batch_size=4", "data.strips_per_batch=3"])
    with pytest.raises(ConfigError, match="data.cache_gb: must be positive"):
        load(None, [*REQUIRED, "data.cache_gb=0"])
    assert load(None, [*REQUIRED, "train.micro_batch_size=4", "data.strips_per_batch=2"]).data.strips_per_batch == 2
    with pytest.raises(ConfigError, match=r"eval.batch_size: must be >= 0 \(0: train.micro_batch_size\), got -1"):
        load(None, [*REQUIRED, "eval.batch_size=-1"])
