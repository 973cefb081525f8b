"""The learning-rate schedule (warmup, then cosine, linear or constant) and the AdamW parameter groups, as the
optimizer sees them: values pinned against hand-computed literals, no training."""

import math

import pytest
import torch
from conftest import ROOT

from trainer.config.schema import load
from trainer.models.loading import prepare_model
from trainer.train.optim import build_scheduler, lr_factor, parameter_groups

COS_PI_4 = math.sqrt(2) / 2  # cos(π/4)

# lr_factor(step, total_steps=10, warmup_steps=2, schedule, min_lr_ratio=0.1): warmup (step + 1) / 2, then
# progress p = (step - 2) / 8 and factor 0.1 + 0.9 × shape(p), shape = ½(1 + cos πp) (cosine) or 1 - p (linear)
COSINE_10_WARMUP_2_MIN_01 = {
    0: 0.5,  # warmup: (0 + 1) / 2
    1: 1.0,  # warmup: (1 + 1) / 2
    2: 1.0,  # p = 0: 0.1 + 0.9 × 1
    3: 0.9657457896300791,  # p = 1/8: 0.1 + 0.9 × ½(1 + cos(π/8)) = 0.1 + 0.9 × 0.9619397662556434
    4: 0.8681980515339464,  # p = 1/4: 0.1 + 0.9 × ½(1 + √2/2) = 0.1 + 0.9 × 0.8535533905932737
    6: 0.55,  # p = 1/2: 0.1 + 0.9 × ½
    8: 0.2318019484660536,  # p = 3/4: 0.1 + 0.9 × ½(1 - √2/2) = 0.1 + 0.9 × 0.1464466094067262
    10: 0.1,  # p = 1: the floor
    15: 0.1,  # past total_steps: p is clamped to 1
}
LINEAR_10_WARMUP_2_MIN_01 = {
    0: 0.5,
    1: 1.0,
    2: 1.0,  # p = 0
    3: 0.8875,  # p = 1/8: 0.1 + 0.9 × 0.875
    6: 0.55,  # p = 1/2: 0.1 + 0.9 × 0.5
    10: 0.1,
    20: 0.1,
}
# no warmup, total 4, floor 0: p = step / 4
COSINE_4_NO_WARMUP = {0: 1.0, 1: 0.5 * (1 + COS_PI_4), 2: 0.5, 3: 0.5 * (1 - COS_PI_4), 4: 0.0}
LINEAR_4_NO_WARMUP = {0: 1.0, 1: 0.75, 2: 0.5, 3: 0.25, 4: 0.0}
# constant: warmup (step + 1) / 4, then 1.0 for ever; min_lr_ratio plays no part
CONSTANT_WARMUP_4_MIN_01 = {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0, 9: 1.0, 100: 1.0}

SCHEDULES = [
    (10, 2, "cosine", 0.1, COSINE_10_WARMUP_2_MIN_01),
    (10, 2, "linear", 0.1, LINEAR_10_WARMUP_2_MIN_01),
    (4, 0, "cosine", 0.0, COSINE_4_NO_WARMUP),
    (4, 0, "linear", 0.0, LINEAR_4_NO_WARMUP),
    (10, 4, "constant", 0.1, CONSTANT_WARMUP_4_MIN_01),
]


@pytest.mark.parametrize(("total", "warmup", "schedule", "floor", "expected"), SCHEDULES)
def test_lr_factor_at_several_steps(total, warmup, schedule, floor, expected):
    got = {step: lr_factor(step, total, warmup, schedule, floor) for step in expected}
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_longer_than_the_run_ends_at_the_peak():
    # total_steps 3 <= warmup_steps 4: warmup (step + 1) / 4 while step < 4, then 1.0 (no decay phase)
    got = [lr_factor(step, 3, 4, "cosine", 0.1) for step in range(6)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rel=1e-12)


@pytest.mark.parametrize(("total", "warmup", "schedule", "floor", "expected"), SCHEDULES)
def test_scheduler_sets_base_lr_times_factor_after_k_steps(total, warmup, schedule, floor, expected):
    """LambdaLR's lr after k scheduler steps is base × factor(k): the lr the (k+1)-th optimizer step uses."""
    base = 2e-3
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=base)
    scheduler = build_scheduler(optimizer, total, warmup, schedule, floor)
    seen = {}
    for k in range(max(expected) + 1):
        seen[k] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    assert {k: seen[k] for k in expected} == pytest.approx({k: base * f for k, f in expected.items()}, rel=1e-12)


def lora_config(tiny_llava, *extra):
    return load(
        ROOT / "configs/demo.yaml",
        [f"model.path={tiny_llava}", "optimizer.lr=2e-3", "optimizer.projector_lr=5e-4", *extra],
    )


# the tiny llava (hidden 64, intermediate 128, 4 heads of 16, 2 KV heads, 2 layers) with LoRA r=16 (demo.yaml):
# projector (modules_to_save copy): linear_1 and linear_2, each 64×64 + 64 = 4160 → 8320
# LoRA per layer (A: r×in, B: out×r): q 16·64 + 64·16 = 2048, k and v 16·64 + 32·16 = 1536 each,
# o 2048, gate and up 16·64 + 128·16 = 3072 each, down 16·128 + 64·16 = 3072 → 16384; 2 layers → 32768
PROJECTOR_NUMEL, LORA_NUMEL = 8320, 32768


def test_groups_without_weight_decay_one_per_part(tiny_llava):
    config = lora_config(tiny_llava)
    model, parts = prepare_model(config, torch.device("cpu"))
    optimizer = torch.optim.AdamW(parameter_groups(model, parts, config))
    names = {id(p): name for name, p in model.named_parameters()}
    groups = optimizer.param_groups
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("projector_no_decay", 5e-4, 0.0),
        ("language_no_decay", 2e-3, 0.0),
    ]
    projector, language = ([names[id(p)] for p in g["params"]] for g in groups)
    assert len(projector) == 4 and all(".multi_modal_projector.modules_to_save.default." in n for n in projector)
    assert len(language) == 28 and all(".language_model." in n and ".lora_" in n for n in language)  # 7 × 2 × A, B
    assert [sum(p.numel() for p in g["params"]) for g in groups] == [PROJECTOR_NUMEL, LORA_NUMEL]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(projector) | set(language)  # the frozen originals and the tower are in no group


def test_weight_decay_spares_biases_and_keeps_each_parts_lr(tiny_llava):
    config = lora_config(tiny_llava, "optimizer.weight_decay=0.1")
    model, parts = prepare_model(config, torch.device("cpu"))
    optimizer = torch.optim.AdamW(parameter_groups(model, parts, config))
    names = {id(p): name for name, p in model.named_parameters()}
    groups = optimizer.param_groups
    assert [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [
        ("projector", 5e-4, 0.1, 2),  # linear_1.weight, linear_2.weight
        ("projector_no_decay", 5e-4, 0.0, 2),  # their biases
        ("language", 2e-3, 0.1, 28),  # LoRA A and B are all 2-D
    ]
    assert all(names[id(p)].endswith(".bias") for p in groups[1]["params"])
    assert all(names[id(p)].endswith(".weight") for p in groups[0]["params"])


def test_each_group_follows_the_schedule_from_its_own_lr(tiny_llava):
    config = lora_config(tiny_llava)
    model, parts = prepare_model(config, torch.device("cpu"))
    optimizer = torch.optim.AdamW(parameter_groups(model, parts, config))
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    history = []
    for _ in range(4):
        history.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    history.append([g["lr"] for g in optimizer.param_groups])
    # [projector 5e-4, language 2e-3] × factor(k), factor = 0.5, 1, 1, 0.1 + 0.9·½(1 + cos(π/8)), 0.1 + 0.9·½(1 + √2/2)
    expected = [
        [2.5e-4, 1e-3],
        [5e-4, 2e-3],
        [5e-4, 2e-3],
        [4.828728948150395e-4, 1.931491579260158e-3],  # × 0.9657457896300791
        [4.340990257669732e-4, 1.7363961030678928e-3],  # × 0.8681980515339464
    ]
    assert [pytest.approx(row, rel=1e-12) for row in expected] == history
