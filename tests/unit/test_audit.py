"""The gradient audit's parts on given tensors, and the callback on a small module with a plain optimizer (no
DeepSpeed engine: the safe accessors hand back the module's own tensors)."""

import contextlib
import csv
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainer.config.fields import ConfigError
from trainer.config.schema import load
from trainer.models.parts import ModelParts
from trainer.run_folder import RunFolder
from trainer.train.audit import (
    GradientAudit,
    LossSpikes,
    audit_callbacks,
    changed_anywhere,
    fingerprint,
    fingerprints,
    grad_stats,
    layer_index,
    norm_problem,
    overflowed,
    tracked_parameters,
    update_stats,
)
from trainer.train.audit_plot import layer_means
from trainer.train.state import TrainerState

PARTS = ModelParts(vision="vision", projector="projector", language="language")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = nn.Linear(3, 3)
        self.projector = nn.Linear(3, 3)
        self.language = nn.Module()
        self.language.layers = nn.ModuleList([nn.Linear(3, 3) for _ in range(2)])
        self.language.unused = nn.Parameter(torch.ones(2))  # trainable, never in the graph: no gradient, no update
        self.vision.requires_grad_(False)

    def forward(self, x):
        x = self.projector(self.vision(x))
        for layer in self.language.layers:
            x = layer(x)
        return x.square().mean()


def config(*overrides: str):
    return load(None, ["model.path=m", "data.train=d", *overrides])


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("base_model.model.model.language_model.layers.12.mlp.up_proj.lora_A.default.weight", 12),
        ("model.vision_tower.encoder.layers.3.mlp.fc1.weight", 3),
        ("transformer.h.5.attn.c_attn.weight", 5),
        ("model.multi_modal_projector.linear_1.weight", None),
    ],
)
def test_layer_index_comes_from_the_numbered_block(name, index):
    assert layer_index(name) == index


def test_grad_columns_from_a_gradient():
    stats = grad_stats(torch.tensor([0.0, 3.0, -4.0, 0.0]))
    assert stats == {"grad_norm": 5.0, "mean_abs_grad": 1.75, "zero_grad_fraction": 0.5}
    assert all(math.isnan(value) for value in grad_stats(None).values())


def test_update_columns_compare_the_weight_before_and_after():
    assert update_stats(torch.tensor([3.0, 0.0]), torch.tensor([3.0, 4.0])) == {
        "weight_norm": 5.0,
        "update_norm": 4.0,
        "update_ratio": 0.8,
    }
    assert math.isnan(update_stats(torch.zeros(2), torch.zeros(2))["update_ratio"])


def test_groups_are_the_optimizers_even_for_a_zero3_partitioned_weight():
    model = Tiny()
    weight = model.language.layers[0].weight
    weight.ds_shape, weight.data = weight.shape, torch.empty(0)  # as ZeRO-3 leaves it
    trainable, frozen = tracked_parameters(model, PARTS, config("optimizer.weight_decay=0.1"))
    groups = {item.name: (item.part, item.group, item.shape) for item in trainable}
    assert groups["language.layers.0.weight"] == ("language", "language", (3, 3))
    assert groups["language.layers.0.bias"] == ("language", "language_no_decay", (3,))
    assert groups["projector.weight"] == ("projector", "projector", (3, 3))
    assert sorted(frozen) == ["vision.bias", "vision.weight"] and "vision.weight" not in groups


def test_norm_limits():
    assert norm_problem(2e3, 1e3, 1e-8) == "high"
    assert norm_problem(float("inf"), 1e3, 1e-8) == "high"
    assert norm_problem(1e-9, 1e3, 1e-8) == "low"
    assert norm_problem(1.0, 1e3, 1e-8) is None


def test_an_fp16_overflow_is_a_skip_without_a_new_bad_step():
    assert overflowed((0, 0), (1, 0))
    assert overflowed((1, 1), (2, 1))  # an overflow right after a non-finite loss
    assert not overflowed((0, 0), (1, 1))  # a non-finite loss
    assert not overflowed((1, 0), (1, 0))  # an applied step
    assert not overflowed(None, (3, 0))  # the first boundary (or after a resume) has nothing to compare


def test_loss_spikes_against_the_running_median():
    spikes = LossSpikes(factor=5.0, window=4, warmup=3)
    assert not any(spikes.check(loss) for loss in (1.0, 100.0, 1.0))  # too few losses to judge the second
    assert spikes.check(5.5)  # median of 1, 100, 1 is 1
    assert not spikes.check(4.0)
    assert not LossSpikes(factor=0.0, warmup=0).check(1e9)


def test_layer_means_weigh_by_size_in_model_order():
    rows = [
        {"part": "projector", "layer": None, "numel": 4, "mean_abs_grad": 1.0},
        {"part": "language", "layer": 0, "numel": 1, "mean_abs_grad": 4.0},
        {"part": "language", "layer": 0, "numel": 3, "mean_abs_grad": 0.0},
        {"part": "language", "layer": 1, "numel": 2, "mean_abs_grad": math.nan},
    ]
    assert layer_means(rows) == [("projector", 1.0), ("language.0", 1.0)]


def test_a_changed_element_changes_the_fingerprint():
    parameters = [nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4))]
    before = fingerprints(parameters, torch.device("cpu"))
    parameters[1].data[2] = 1.5
    assert changed_anywhere(before, fingerprints(parameters, torch.device("cpu"))) == [False, True]
    assert fingerprints([], torch.device("cpu")).shape == (0, 2)


def test_fingerprints_are_summed_in_chunks(monkeypatch):
    tensor = torch.arange(10.0)
    monkeypatch.setattr("trainer.train.audit.CHUNK", 3)
    assert fingerprint(tensor).tolist() == [45.0, 285.0]


def test_the_audit_is_built_only_when_asked_and_checks_its_keys():
    assert audit_callbacks(config().train) == []
    assert isinstance(audit_callbacks(config("train.audit_every=10").train)[0], GradientAudit)
    with pytest.raises(ConfigError) as error:
        audit_callbacks(config("train.audit_every=-1", "train.grad_warn_below=5", "train.grad_warn_above=1").train)
    assert len(error.value.problems) == 2


class Recorder:
    def __init__(self):
        self.lines = []

    def log(self, metrics, step):
        self.lines.append((step, metrics))


def fake_trainer(tmp_path, model, optimizer, norm):
    engine = SimpleNamespace(
        module=model, optimizer=optimizer, device=torch.device("cpu"), get_global_grad_norm=lambda: norm
    )
    return SimpleNamespace(
        engine=engine,
        parts=PARTS,
        config=config(),
        world=SimpleNamespace(is_main=True),
        state=TrainerState(),
        tracker=Recorder(),
        run_folder=RunFolder(tmp_path),
        pending={"losses": []},
        paused=contextlib.nullcontext,
    )


def train_step(audit, trainer, optimizer, tamper=None):
    loss = trainer.engine.module(torch.ones(2, 3))
    trainer.pending["losses"] = [loss.detach()]
    audit.on_step_boundary(trainer)
    loss.backward()
    audit.on_gradients(trainer)
    optimizer.step()
    optimizer.zero_grad()
    if tamper:
        tamper()
    trainer.state.step += 1
    audit.on_step_end(trainer)


def test_the_callback_writes_the_table_and_reports_stuck_and_moved_parameters(tmp_path, caplog):
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trainer = fake_trainer(tmp_path, model, optimizer, norm=2e3)
    audit = GradientAudit(every=2, warn_above=1e3, warn_below=1e-8, spike_factor=5.0)
    with caplog.at_level(logging.WARNING, logger="shardtune"):
        train_step(audit, trainer, optimizer)
        train_step(audit, trainer, optimizer, tamper=lambda: model.vision.weight.data.add_(1.0))  # a frozen one moves
    assert sorted(path.name for path in (tmp_path / "audit").iterdir()) == [
        "grad_table_step_2.csv",
        "gradient_flow_step_2.png",
    ]
    with open(tmp_path / "audit" / "grad_table_step_2.csv", newline="") as file:
        rows = {row["name"]: row for row in csv.DictReader(file)}
    assert len(rows) == 7 and rows["language.layers.1.weight"]["layer"] == "1"
    assert rows["language.unused"]["grad_norm"] == "nan" and float(rows["language.unused"]["update_norm"]) == 0
    assert float(rows["projector.weight"]["update_norm"]) > 0
    (step1, first), (step2, second) = trainer.tracker.lines
    assert (step1, first["health/grad_norm_high"]) == (1, 1) and "audit/params" not in first  # a warning alone
    assert step2 == 2 and second["health/grad_norm_high"] == 2
    assert second["health/frozen_moved"] == 1 and second["health/stuck_params"] == 1
    assert "moved 1 frozen parameters: vision.weight" in caplog.text
    assert "left 1 trainable parameters unchanged: language.unused" in caplog.text


def test_loss_spikes_and_fp16_overflows_are_logged_on_the_step_after_them(tmp_path):
    trainer = fake_trainer(tmp_path, Tiny(), None, norm=1.0)
    audit = GradientAudit(every=100, warn_above=1e3, warn_below=1e-8, spike_factor=5.0)
    outcomes = [("applied", 1.0)] * 3 + [("overflow", 1.0)] + [("applied", 1.0)] * 2 + [("applied", 6.0)]
    for outcome, loss in outcomes:
        audit.on_step_boundary(trainer)
        trainer.pending["losses"] = [torch.tensor(loss)]
        audit.on_gradients(trainer)
        if outcome == "overflow":  # as count_step records a skip without a non-finite loss
            trainer.state.skipped_steps += 1
            continue
        trainer.state.step += 1
        audit.on_step_end(trainer)
    lines = [(step, line["health/fp16_overflows"], line["health/loss_spikes"]) for step, line in trainer.tracker.lines]
    assert lines == [(4, 1, 0), (6, 1, 1)]
