"""Every kit family trains for real on 2 ranks, micro batch 1, on data that mixes text-only and image samples, under
ZeRO-3 (LoRA, projector in full, the adapter gathered from partitions and exported); the three main families under
ZeRO-2 too: the run ends, and held-out exact match rises.

The tiny models use the kit's small vision input here (`SMALL_IMAGE`), the published templates, tokens and
processor rules otherwise; tests/unit/test_families.py checks each family at its published settings in-process.
"""

import json
from pathlib import Path

import pytest
from conftest import REPLACED_TEMPLATES, ROOT, launch_training

from trainer.export.cli import EXIT_OK
from trainer.export.cli import main as export_main
from trainer.export.save import MERGE_SUMMARY
from trainer.testing.tiny import FAMILIES, KITS, SMALL_IMAGE, build_tiny_model

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
STEPS = 32


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("small-families")
    return {family: build_tiny_model(family, root / family, image_size=SMALL_IMAGE) for family in KITS}


@pytest.mark.parametrize(
    ("family", "zero"), [(family, 3) for family in sorted(KITS)] + [(family, 2) for family in FAMILIES]
)
def test_family_trains_on_mixed_data_on_two_ranks(small_models, mixed_shards, tmp_path, family, zero):
    run = tmp_path / "run"
    template = REPLACED_TEMPLATES.get(family)
    result = launch_training(
        "deepspeed",
        2,
        [
            f"model.path={small_models[family]}",
            f"data.train={mixed_shards / 'train'}",
            f"data.val={mixed_shards / 'val'}",
            f"train.output_dir={run}",
            "train.micro_batch_size=1",
            f"train.max_steps={STEPS}",
            "train.log_every=4",
            "data.num_workers=1",
            "eval.at_start=true",
            "eval.max_new_tokens=4",
            "eval.batch_size=8",  # batched, left-padded generation over text-only and image prompts alike
            "optimizer.lr=5e-3",
            "optimizer.projector_lr=5e-3",
            f"deepspeed.config={ROOT}/configs/deepspeed/zero{zero}.json",
            f"model.chat_template={template or ''}",
            "checkpoint.every_steps=0",
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == 2 and summary["zero_stage"] == zero
    assert summary["accuracy_after"] > summary["accuracy_before"], summary
    if zero == 3:  # the adapter gathered from ZeRO-3 partitions merges into a standalone model that verifies
        assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "merged")]) == EXIT_OK
        exported = json.loads((tmp_path / "merged" / MERGE_SUMMARY).read_text())
        assert exported["verify_samples"] > 0
