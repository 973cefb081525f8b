"""Export (`launch/merge_lora.py`, `trainer.export.cli`): real tiny training runs merged and compared with the model
they came from, plus fast checks on a random adapter (refusals, tampering, half precision, plain loading).

Independent checks, next to the exporter's own verification: the engine's eval loss at the end of training
(`train_summary.json`, computed by the DeepSpeed engine's module on the val split with the weights of the
final checkpoint) recomputed with the exported model; logits of base + adapter built here with peft; the
merged QLoRA weights against dequantised 4-bit weights + the LoRA product.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, launch_training
from safetensors.torch import load_file, save_file

from trainer.export.cli import EXIT_MISMATCH, EXIT_OK, EXIT_UNUSABLE, main
from trainer.export.safetensors_reader import SafetensorsWeights
from trainer.export.save import MERGE_SUMMARY
from trainer.export.verify import synthetic_samples
from trainer.export.zero_reader import zero_tensors

CPU = torch.device("cpu")
FP32_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------------------------- helpers


def train(tiny_llava: Path, shards: Path, run: Path, launcher: str, ranks: int, *extra: str) -> Path:
    overrides = [
        f"model.path={tiny_llava}",
        f"data.train={shards / 'train'}",
        f"data.val={shards / 'val'}",
        f"train.output_dir={run}",
        "train.micro_batch_size=4",
        "train.max_steps=20",
        "data.num_workers=1",
        "eval.at_start=false",
        "eval.max_new_tokens=1",
        *extra,
    ]
    result = launch_training(launcher, ranks, overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run


def merge(checkpoint: Path, out: Path, *extra: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--out", str(out), *extra])


def summary_of(out: Path) -> dict:
    return json.loads((out / MERGE_SUMMARY).read_text())


def load_exported(out: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(out).eval()


def val_samples(shards: Path) -> list:
    from data_shards.stream import ShardStream, StreamConfig

    return list(ShardStream(shards / "val", config=StreamConfig(shuffle=False), rank=0, world_size=1))


def collate(model_dir: Path, model_config, samples: list) -> dict[str, torch.Tensor]:
    from trainer.batches.collate import Collator, token_check_for
    from trainer.models.processor import load_processor

    return Collator(load_processor(model_dir), 256, *token_check_for(model_config))(samples).inputs


@torch.no_grad()
def val_loss(model, model_dir: Path, shards: Path) -> float:
    """Token-weighted mean loss over the val split, as the engine's evaluation computes it."""
    samples, total, tokens = val_samples(shards), 0.0, 0
    for start in range(0, len(samples), 4):
        inputs = collate(model_dir, model.config, samples[start : start + 4])
        supervised = int((inputs["labels"] != -100).sum())
        total += float(model(**inputs, use_cache=False).loss) * supervised
        tokens += supervised
    return total / tokens


@torch.no_grad()
def logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    return model(**inputs, use_cache=False).logits[inputs["attention_mask"].bool()]


def engine_eval_loss(run: Path) -> float:
    return json.loads((run / "train_summary.json").read_text())["eval_loss_after"]


# ---------------------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def zero2_run(tiny_llava, color_shards, tmp_path_factory) -> Path:
    return train(
        tiny_llava,
        color_shards,
        tmp_path_factory.mktemp("zero2") / "run",
        "deepspeed",
        2,
        f"deepspeed.config={ROOT}/configs/deepspeed/zero2.json",
    )


@pytest.fixture(scope="module")
def zero3_run(tiny_llava, color_shards, tmp_path_factory) -> Path:
    return train(
        tiny_llava,
        color_shards,
        tmp_path_factory.mktemp("zero3") / "run",
        "deepspeed",
        2,
        f"deepspeed.config={ROOT}/configs/deepspeed/zero3.json",
    )


@pytest.mark.parametrize("run_fixture", ["zero2_run", "zero3_run"])
@pytest.mark.multiprocess
@pytest.mark.slow
def test_lora_run_merges_into_a_model_equal_to_base_plus_adapter(
    run_fixture, request, tiny_llava, color_shards, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    run, out = request.getfixturevalue(run_fixture), tmp_path / "merged"
    assert merge(run, out) == EXIT_OK
    summary = summary_of(out)
    assert summary["kind"] == "lora" and summary["passed"] and summary["verify_source"] == "data.val"
    assert summary["max_abs_logit_diff"] <= FP32_TOLERANCE == summary["tolerance"]
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.parent == run / "checkpoints" and (checkpoint / "adapter").is_dir()

    merged = load_exported(out)
    reference = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_llava), str(checkpoint / "adapter")
    ).eval()
    inputs = collate(out, merged.config, val_samples(color_shards)[:4])  # one padded batch of 4
    assert (logits(merged, inputs) - logits(reference, inputs)).abs().max() <= FP32_TOLERANCE
    adapter = load_file(checkpoint / "adapter" / "adapter_model.safetensors")
    projector = adapter["base_model.model.model.multi_modal_projector.linear_1.weight"]
    assert torch.equal(merged.model.multi_modal_projector.linear_1.weight, projector)  # modules_to_save carried
    assert not any("lora" in name for name in merged.state_dict())
    assert val_loss(merged, out, color_shards) == pytest.approx(engine_eval_loss(run), rel=1e-5)

    card = (out / "README.md").read_text()
    fingerprint = json.loads((color_shards / "train" / "index.json").read_text())["source"]["fingerprint"]
    assert str(tiny_llava) in card and str(checkpoint) in card and fingerprint in card and "lora:" in card


# ---------------------------------------------------------------------------------------------- QLoRA


@pytest.fixture(scope="module")
def qlora_run(tiny_llava, color_shards, tmp_path_factory) -> Path:
    pytest.importorskip("bitsandbytes")
    return train(
        tiny_llava, color_shards, tmp_path_factory.mktemp("qlora") / "run", "in-process", 1, "quant.load_in_4bit=true"
    )


@pytest.mark.multiprocess
@pytest.mark.slow
def test_qlora_run_merges_into_the_dequantised_4bit_weights(qlora_run, tiny_llava, color_shards, tmp_path):
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from trainer.config.schema import load
    from trainer.models.loading import load_base_model

    out = tmp_path / "merged"
    assert merge(qlora_run, out) == EXIT_OK
    summary = summary_of(out)
    assert summary["kind"] == "qlora" and summary["passed"] and summary["max_abs_logit_diff"] <= FP32_TOLERANCE
    merged = load_exported(out)
    assert getattr(merged.config, "quantization_config", None) is None
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())

    # W_merged = dequantise(4-bit W) + (alpha / r) B A, not the original W + (alpha / r) B A
    quantised = load_base_model(load(qlora_run / "config.resolved.json", []), CPU)
    layer = quantised.model.language_model.layers[0].self_attn.q_proj
    dequantised = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    adapter = load_file(Path(summary["checkpoint"]) / "adapter" / "adapter_model.safetensors")
    prefix = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    delta = (32 / 16) * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
    got = merged.model.language_model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(got, dequantised + delta, rtol=0, atol=1e-6)
    original = AutoModelForImageTextToText.from_pretrained(tiny_llava).model.language_model.layers[0].self_attn.q_proj
    assert (got - (original.weight + delta)).abs().max() > 100 * 1e-6  # the control is far off

    # the 4-bit model + adapter as trained (4-bit layers in train mode: no repack), on one padded batch
    reference = PeftModel.from_pretrained(quantised, str(Path(summary["checkpoint"]) / "adapter")).eval()
    for module in reference.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.train()
    inputs = collate(out, merged.config, val_samples(color_shards)[:4])
    assert (logits(merged, inputs) - logits(reference, inputs)).abs().max() <= FP32_TOLERANCE
    assert val_loss(merged, out, color_shards) == pytest.approx(engine_eval_loss(qlora_run), rel=1e-5)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_qlora_adapter_copied_out_of_its_run_still_merges_as_qlora(qlora_run, tmp_path):
    checkpoint = qlora_run / "checkpoints" / (qlora_run / "checkpoints" / "latest").read_text().strip()
    bare = tmp_path / "bare-adapter"
    shutil.copytree(checkpoint / "adapter", bare)  # the run's config travels in the adapter folder
    out = tmp_path / "merged"
    assert merge(bare, out) == EXIT_OK
    summary = summary_of(out)
    assert summary["kind"] == "qlora" and summary["passed"] and summary["max_abs_logit_diff"] <= FP32_TOLERANCE


# ---------------------------------------------------------------------------------------------- full fine-tuning


@pytest.fixture(scope="module", params=["zero2", "zero3"])
def full_run(request, tiny_llava, color_shards, tmp_path_factory) -> Path:
    return train(
        tiny_llava,
        color_shards,
        tmp_path_factory.mktemp(f"full-{request.param}") / "run",
        "deepspeed",
        2,
        f"deepspeed.config={ROOT}/configs/deepspeed/{request.param}.json",
        "lora.enabled=false",
    )


def latest_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_bounded_reader_gives_deepspeeds_own_consolidation_tensor_for_tensor(full_run):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = latest_checkpoint(full_run)
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    ours = dict(zero_tensors(checkpoint, chunks=3))  # reopens the files twice on the way
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    assert any(t.numel() > 1000 for t in ours.values())


@pytest.mark.multiprocess
@pytest.mark.slow
def test_full_finetuning_is_consolidated_into_the_engines_weights(full_run, tiny_llava, color_shards, tmp_path):
    from transformers import AutoModelForImageTextToText

    checkpoint = latest_checkpoint(full_run)
    out = tmp_path / "merged"
    assert merge(checkpoint, out, "--max-shard-size", "200KB") == EXIT_OK
    summary = summary_of(out)
    assert summary["kind"] == "full" and summary["passed"] and summary["max_abs_logit_diff"] <= FP32_TOLERANCE
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
    assert summary["peak_rss_bytes"] > summary["rss_before_bytes"] > 0 and summary["peak_rss_ratio"] > 1

    merged = load_exported(out)
    engine_loss = engine_eval_loss(full_run)
    assert val_loss(merged, out, color_shards) == pytest.approx(engine_loss, rel=1e-5)
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    assert val_loss(base, tiny_llava, color_shards) > 1.2 * engine_loss  # training moved the weights
    frozen = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"  # frozen under ZeRO-3 too
    assert torch.equal(merged.state_dict()[frozen], base.state_dict()[frozen])


# ---------------------------------------------------------------------------------------------- a random adapter


@pytest.fixture(scope="module")
def random_adapter(tiny_llava, tmp_path_factory) -> Path:
    """A PEFT adapter on the tiny LLaVA with random (non-zero) LoRA B: no training, no run folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    targets = r".*language_model.*\.(q_proj|v_proj|down_proj)"
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=targets, modules_to_save=["multi_modal_projector"])
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_llava), lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    directory = tmp_path_factory.mktemp("adapter") / "random"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def exported(random_adapter, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "merged"
    assert merge(random_adapter, out) == EXIT_OK
    return out


def test_an_adapter_folder_merges_onto_the_base_it_names_and_verifies_on_synthetic_samples(exported, tiny_llava):
    summary = summary_of(exported)
    assert summary["base"] == str(tiny_llava) and summary["dtype"] == "float32"  # the base model's own dtype
    assert summary["verify_source"] == "synthetic" and summary["verify_samples"] == 4
    assert summary["passed"] and summary["max_abs_logit_diff"] <= FP32_TOLERANCE
    assert summary["merged_bytes"] == sum(f.stat().st_size for f in exported.glob("*.safetensors"))


def test_the_exported_model_loads_with_plain_transformers_and_its_processor(exported, tmp_path):
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])\n"
        "processor = AutoProcessor.from_pretrained(sys.argv[1])\n"
        "chat = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'What color?'}]}]\n"
        "prompt = processor.apply_chat_template(chat, add_generation_prompt=True)\n"
        "inputs = processor(images=Image.new('RGB', (32, 32), 'red'), text=prompt, return_tensors='pt')\n"
        "output = model.generate(**inputs, max_new_tokens=2, do_sample=False)\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] in ('trainer', 'data_shards'))\n"
        "assert not ours, ours\n"
        "print(prompt.endswith('ASSISTANT:'), output.shape[1] - inputs['input_ids'].shape[1], model.dtype)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(exported)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["True", "2", "torch.float32"]


def test_a_non_empty_out_is_refused_without_force(random_adapter, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch/merge_lora.py"), "--checkpoint", str(random_adapter), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_UNUSABLE
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "--force" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert merge(random_adapter, out, "--force", "--verify-samples", "0") == EXIT_OK
    assert not (out / "keep.txt").exists() and summary_of(out)["passed"] is None


def tampered(adapter: Path, directory: Path, change) -> Path:
    """A copy of `adapter` whose weights file went through `change(dict of tensors)`."""
    directory.mkdir()
    (directory / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    tensors = load_file(adapter / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, directory / "adapter_model.safetensors")
    return directory


def test_an_adapter_with_a_non_finite_weight_fails_verification(random_adapter, tmp_path):
    def poison(tensors):
        name = next(n for n in sorted(tensors) if "lora_B" in n)
        tensors[name][0, 0] = float("nan")

    out = tmp_path / "merged"
    assert merge(tampered(random_adapter, tmp_path / "nan", poison), out) == EXIT_MISMATCH
    assert summary_of(out)["passed"] is False


@pytest.mark.filterwarnings("ignore:Found missing adapter keys")
def test_an_adapter_missing_a_tensor_is_refused(random_adapter, tmp_path, capsys):
    def drop(tensors):
        del tensors[next(n for n in sorted(tensors) if "lora_B" in n)]

    adapter = tampered(random_adapter, tmp_path / "short", drop)
    assert merge(adapter, tmp_path / "merged") == EXIT_UNUSABLE
    assert "adapter_model.safetensors: missing" in capsys.readouterr().err


def test_bf16_export_passes_its_default_tolerance_and_fails_at_zero(random_adapter, exported, tiny_llava, tmp_path):
    out = tmp_path / "bf16"
    assert merge(random_adapter, out, "--dtype", "bfloat16") == EXIT_OK
    summary = summary_of(out)
    assert load_exported(out).dtype == torch.bfloat16 and summary["merged_bytes"] * 2 == pytest.approx(
        summary_of(exported)["merged_bytes"], rel=0.01
    )
    assert 0 < summary["max_abs_logit_diff"] <= summary["tolerance"]
    # yet far below what the adapter itself changes: the tolerance would catch a merge that lost it
    inputs = collate(exported, load_exported(exported).config, synthetic_samples(2))
    effect = (logits(load_exported(exported), inputs) - logits(load_exported(tiny_llava), inputs)).abs().max()
    assert summary["tolerance"] < 0.2 * effect
    assert merge(random_adapter, out, "--dtype", "bfloat16", "--tolerance", "0", "--force") == EXIT_MISMATCH
    assert summary_of(out)["passed"] is False and summary_of(out)["tolerance"] == 0


def test_a_folder_that_is_no_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert merge(tmp_path / "empty", tmp_path / "out") == EXIT_UNUSABLE
    assert "not a run, a complete checkpoint or an adapter folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("base_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("read", ["tensor by tensor", "whole base"])
def test_a_bf16_export_is_merged_in_fp32_arithmetic_without_an_fp32_copy(
    base_dtype, read, tiny_llava, tmp_path, monkeypatch
):
    """Base held in bf16 (half the memory of an fp32 copy), yet every weight is round_bf16(W + ΔW) computed
    in fp32 from the stored W, bit for bit what merging an fp32 copy and casting would give; the trained
    projector (modules_to_save) replaces the base's. Also where the base cannot be read tensor by tensor
    (a hub id, say) and is loaded whole."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    if read == "whole base":
        monkeypatch.setattr(SafetensorsWeights, "open", classmethod(lambda cls, folder: None))

    base_dir = tmp_path / f"{base_dtype}-base"
    AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=getattr(torch, base_dtype)).save_pretrained(base_dir)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "preprocessor_config.json",
        "special_tokens_map.json",
    ):
        if (tiny_llava / name).exists():
            shutil.copy(tiny_llava / name, base_dir / name)
    torch.manual_seed(0)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=r".*language_model.*\.(q_proj|v_proj)",
        modules_to_save=["multi_modal_projector"],
    )
    peft_model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32), lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter), alpha=1e-3)  # ΔW near W: rounding W first would show
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    expected = {k: v.to(torch.bfloat16) for k, v in peft_model.merge_and_unload().state_dict().items()}

    out = tmp_path / "merged"
    assert merge(adapter, out, "--base", str(base_dir), "--dtype", "bfloat16") == EXIT_OK
    assert summary_of(out)["dtype"] == "bfloat16" and summary_of(out)["passed"]
    merged = load_exported(out).state_dict()
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
