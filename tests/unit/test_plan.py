"""The memory planner: counts from a meta-device model equal the loaded model's, the meta trace of a layer's
saved activations equals what autograd saves on real tensors, the model-state layout follows DeepSpeed's, and
the CLI answers `fits` and the largest micro batch consistently."""

import json

import pytest
import torch

from trainer.config.schema import load
from trainer.plan import activations
from trainer.plan.cli import DOES_NOT_FIT, main
from trainer.plan.estimate import GIB, language_model, plan
from trainer.plan.model_shape import ParameterCounts, count_parameters, meta_model
from trainer.plan.states import Layout, four_bit_bytes, model_states
from trainer.plan.tokens import given
from trainer.testing.full_size import PARAMETERS, write_full_size_config

DEMO = "configs/demo.yaml"


def config_for(model, shards, *overrides):
    return load(None, [f"model.path={model}", f"data.train={shards / 'train'}", *overrides])


@pytest.mark.parametrize("lora", ["true", "false"])
def test_meta_counts_equal_the_loaded_models(tiny_llava, color_shards, lora):
    from trainer.models.loading import prepare_model

    config = config_for(tiny_llava, color_shards, f"lora.enabled={lora}", "model.freeze_vision_tower=true")
    counts = count_parameters(*meta_model(config))
    model, _ = prepare_model(config, torch.device("cpu"))
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.frozen == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert (counts.quantizable > 0) == (lora == "true")  # the frozen language model's Linear weights


def real_layer_saved_bytes(model, parts, batch, tokens):
    """The same layer on real CPU tensors: what autograd saves, parameters excluded, each storage once."""
    language = language_model(model, parts)
    hidden = language.config.hidden_size
    inputs = torch.randn(batch, tokens, hidden, requires_grad=True)
    positions = torch.arange(tokens).expand(batch, tokens)
    position_embeddings = language.rotary_emb(inputs, positions)
    layer = activations.decoder_layers(language)[0]

    def forward():
        layer(inputs, attention_mask=None, position_embeddings=position_embeddings, position_ids=positions)

    return activations.saved_bytes(model, forward)


@pytest.mark.parametrize("lora", ["true", "false"])
def test_meta_trace_of_a_layer_equals_real_saved_tensors(tiny_llava, color_shards, lora):
    from trainer.models.loading import prepare_model

    config = config_for(tiny_llava, color_shards, f"lora.enabled={lora}", "model.attention=sdpa")
    meta, parts = meta_model(config)
    hidden = language_model(meta, parts).config.hidden_size
    traced = activations.layer_bytes(meta, language_model(meta, parts), 3, 40, hidden, torch.float32)
    real, real_parts = prepare_model(config, torch.device("cpu"))
    assert traced == real_layer_saved_bytes(real, real_parts, 3, 40)
    assert traced > 3 * 40 * hidden * 4  # more than the layer's input alone


def layout(stage, ranks=8, low_precision=True, **changes):
    values = dict(
        stage=stage,
        ranks=ranks,
        weight_bytes=2,
        low_precision=low_precision,
        offload_optimizer=False,
        offload_param=False,
        reduce_bucket=0,
        overlap_comm=False,
        prefetch_bucket=0,
        max_live=0,
        four_bit=False,
        double_quant=True,
        touched_only=False,
    )
    return Layout(**{**values, **changes})


def full(parameters):
    return ParameterCounts(parameters, 0, 0, 0, 1)


def test_zero_stages_partition_as_the_zero_paper_counts():
    """ZeRO paper (Rajbhandari et al. 2020), mixed-precision Adam: 2 + 2 + 12 bytes per parameter, the
    optimizer's 12 partitioned from stage 1, gradients from stage 2, weights at stage 3 (buckets left out)."""
    psi, ranks = 7_500_000_000, 64

    def total(stage):
        return sum(model_states(full(psi), layout(stage, ranks))["device"].values())

    assert total(1) == pytest.approx(2 * psi + 4 * psi + 12 * psi / ranks)  # fp32 gradient accumulation: 4 bytes
    assert total(2) == pytest.approx(2 * psi + 4 * psi / ranks + 12 * psi / ranks)
    assert total(3) == pytest.approx(2 * psi / ranks + 4 * psi / ranks + 12 * psi / ranks)


def test_offload_moves_optimizer_state_to_the_host():
    counts = full(1_000_000)
    on_device = model_states(counts, layout(2))
    offloaded = model_states(counts, layout(2, offload_optimizer=True))
    moved = sum(on_device["device"].values()) - sum(offloaded["device"].values())
    assert moved == pytest.approx(sum(offloaded["host"].values()))
    assert set(offloaded["host"]) == {"master", "optimizer", "gradients"}


def test_buckets_count_what_is_written_on_the_cpu_and_what_is_allocated_on_a_gpu():
    counts = full(1_000)
    gpu = model_states(counts, layout(2, reduce_bucket=10_000, overlap_comm=True))
    cpu = model_states(counts, layout(2, reduce_bucket=10_000, overlap_comm=True, touched_only=True))
    assert gpu["device"]["buffers"] == 2 * 10_000 * 2
    assert cpu["device"]["buffers"] == 1_000 * 2


def test_four_bit_weights_take_about_half_a_byte():
    elements = 64 * 256 * 100
    assert four_bit_bytes(elements, double_quant=True) / elements == pytest.approx(0.5 + 1 / 64 + 1 / 4096)
    assert four_bit_bytes(6400, double_quant=False) == 6400 * (0.5 + 4 / 64)


def run_cli(capsys, *arguments):
    code = main(list(arguments))
    return code, capsys.readouterr()


def test_cli_reports_fit_and_the_largest_micro_batch(tiny_llava, color_shards, capsys):
    common = [
        "--config",
        DEMO,
        "--gpus-per-node",
        "2",
        "--device",
        "cpu",
        "--json",
        f"model.path={tiny_llava}",
        f"data.train={color_shards / 'train'}",
    ]
    code, out = run_cli(capsys, *common, "--gpu-memory-gib", "8")
    plan = json.loads(out.out)
    assert code == 0 and plan["fits"] is True and plan["zero_stage"] == 2 and plan["ranks"] == 2
    assert plan["tokens"]["longest"] > plan["tokens"]["image_tokens_max"] > 0
    largest = plan["largest_micro_batch"]
    per_sample = plan["activations_per_sample_gib"]["off"]
    fixed = plan["per_rank_gib"] - plan["micro_batch"] * per_sample
    assert fixed + largest * per_sample <= 8 < fixed + (largest + 1) * per_sample or largest == 1024
    code, out = run_cli(capsys, *common, "--gpu-memory-gib", str(fixed / 2))
    assert code == DOES_NOT_FIT and json.loads(out.out)["fits"] is False
    ckpt = plan["per_rank_gib_by_checkpointing"]
    assert ckpt["on"] < ckpt["off"]


def test_cli_table_and_given_tokens(tiny_llava, color_shards, capsys):
    code, out = run_cli(
        capsys,
        "--config",
        DEMO,
        "--tokens",
        "4096",
        "--gpu-memory-gib",
        "80",
        f"model.path={tiny_llava}",
        f"data.train={color_shards / 'train'}",
        "model.max_length=8192",
    )
    assert code == 0
    assert "tokens per row: 4,096" in out.out and "| **total** |" in out.out and "largest micro batch" in out.out


def test_cli_names_a_missing_data_path(tiny_llava, tmp_path, capsys):
    code, out = run_cli(capsys, "--config", DEMO, f"model.path={tiny_llava}", f"data.train={tmp_path / 'nope'}")
    assert code == 2 and "data.train" in out.err and "nope" in out.err and "--tokens" in out.err


def test_plan_is_in_gib_and_positive(tiny_llava, color_shards, capsys):
    code, out = run_cli(
        capsys, "--config", DEMO, "--json", f"model.path={tiny_llava}", f"data.train={color_shards / 'train'}"
    )
    plan = json.loads(out.out)
    assert code == 0 and plan["fits"] is None and plan["device_gib"] is None
    assert 0 < plan["per_rank_gib"] < 64 and all(value >= 0 for value in plan["terms_gib"].values())
    assert plan["per_rank_gib"] * GIB > plan["runtime_gib"] * GIB


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_full_size_configs_have_their_model_cards_parameter_count(name, tmp_path):
    path = write_full_size_config(name, tmp_path / name)
    config = load(None, [f"model.path={path}", "data.train=unused", "model.freeze_vision_tower=false"])
    counts = count_parameters(*meta_model(config))
    assert counts.frozen == 0
    assert counts.trainable == pytest.approx(PARAMETERS[name], rel=0.01)


def test_llava_7b_lora_and_full_zero3_on_eight_gpus(tmp_path):
    path = write_full_size_config("llava-1.5-7b-hf", tmp_path / "llava")
    common = [f"model.path={path}", "data.train=unused", "model.dtype=bfloat16", "train.precision=bf16"]
    lora = plan(load(None, [*common, "lora.enabled=true"]), 8, given(2048), "cuda", 80 * GIB)
    assert lora.states["device"]["weights"] / GIB == pytest.approx(2 * 7.07e9 / GIB, rel=0.01)  # bf16, not partitioned
    assert lora.fits(False) and lora.largest_micro_batch(True) > lora.largest_micro_batch(False) >= 1
    full_zero3 = plan(load(None, [*common, "deepspeed.zero_stage=3"]), 8, given(2048), "cuda", 80 * GIB)
    partitioned = sum(full_zero3.states["device"][key] for key in ("weights", "gradients", "master", "optimizer"))
    trained = full_zero3.counts.trainable
    assert partitioned == pytest.approx((2 * full_zero3.counts.frozen + (2 + 4 + 4 + 8) * trained) / 8)
