"""SafetensorsWeights: a model folder's tensors read one at a time, under the model's own names."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

from trainer.export.merge import empty_model
from trainer.export.safetensors_reader import SafetensorsWeights


@pytest.fixture(scope="module")
def sharded_bf16(tiny_llava, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "model"
    AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=torch.bfloat16).save_pretrained(
        out, max_shard_size="100KB"
    )
    return out


def stored_tensors(folder):
    tensors = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            names = handle.keys()  # noqa: SIM118 -- safe_open is not a dict
            tensors.update({name: handle.get_tensor(name) for name in names})
    return tensors


def test_every_tensor_of_a_sharded_folder_reads_back_exactly(sharded_bf16):
    expected = stored_tensors(sharded_bf16)
    weights = SafetensorsWeights.open(sharded_bf16)
    assert len(list(sharded_bf16.glob("*.safetensors"))) > 1 and set(weights.tensors) == set(expected)
    for name, tensor in expected.items():
        read = weights.read(name)
        assert read.dtype == tensor.dtype and read.shape == tensor.shape and torch.equal(read, tensor), name


def test_stored_names_map_one_to_one_onto_the_models_state_dict(sharded_bf16):
    model = empty_model(str(sharded_bf16))
    names = SafetensorsWeights.open(sharded_bf16).model_names(model)
    assert names is not None and set(names) <= set(model.state_dict())
    loaded = AutoModelForImageTextToText.from_pretrained(sharded_bf16, dtype=torch.bfloat16).state_dict()
    weights = SafetensorsWeights.open(sharded_bf16)
    assert all(torch.equal(weights.read(stored), loaded[own]) for own, stored in names.items())


def test_a_folder_without_safetensors_is_none_and_a_truncated_file_names_itself(sharded_bf16, tmp_path):
    assert SafetensorsWeights.open(tmp_path) is None
    weights = SafetensorsWeights.open(sharded_bf16)
    name = max(weights.tensors, key=lambda n: weights.tensors[n].nbytes)
    copy = tmp_path / "cut.safetensors"
    copy.write_bytes(weights.tensors[name].file.read_bytes()[: weights.tensors[name].start + 10])
    cut = SafetensorsWeights({name: replace(weights.tensors[name], file=copy)})
    with pytest.raises(OSError, match="cut.safetensors: truncated inside tensor"):
        cut.read(name)
