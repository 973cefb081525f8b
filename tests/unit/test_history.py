"""history.png from a hand-written metrics.jsonl: the panels present are drawn, runs without eval lines too."""

import json

from PIL import Image

from trainer.run_folder import RunFolder
from trainer.train.history import main, panels, plot_history, read_series


def write_metrics(root, records) -> RunFolder:
    root.mkdir(exist_ok=True)
    (root / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return RunFolder(root)


def train_line(step: int, **extra) -> dict:
    return {
        "step": step,
        "train/loss": 1.0 / step,
        "train/grad_norm": 0.5,
        "train/lr": 1e-3,
        "train/lr/language": 1e-3,
        "train/lr/projector": 2e-3,
        **extra,
    }


def test_loss_lr_eval_and_grad_norm_share_the_step_axis(tmp_path):
    records = [train_line(step, **{"train/loss_ce": 0.9, "train/loss_consistency": 0.1}) for step in range(1, 5)]
    records += [{"step": 2, "eval/loss": 0.7, "eval/accuracy": 0.5, "eval/swap_consistency": 0.9, "eval/samples": 8}]
    records += [{"step": 4, "eval/loss": 0.4, "eval/accuracy": float("nan"), "eval/samples": 8}]
    run = write_metrics(tmp_path / "run", records)
    assert panels(read_series(run.metrics)) == [
        ("loss", ["train/loss", "train/loss_ce", "train/loss_consistency"]),
        ("learning rate", ["train/lr/language", "train/lr/projector"]),
        ("eval loss", ["eval/loss"]),
        ("eval metrics", ["eval/accuracy", "eval/swap_consistency"]),
        ("grad norm", ["train/grad_norm"]),
    ]
    assert plot_history(run) == run.history == tmp_path / "run" / "history.png"
    with Image.open(run.history) as image:
        assert image.format == "PNG" and image.height > image.width


def test_a_run_without_eval_lines_and_a_resumed_one(tmp_path):
    lines = [{k: v for k, v in train_line(step).items() if not k.startswith("train/lr/")} for step in (1, 2, 3, 2, 3)]
    run = write_metrics(tmp_path / "run", lines)
    series = read_series(run.metrics)
    assert sorted(series["train/loss"]) == [1, 2, 3]  # the re-logged steps of a resumed run count once
    assert [title for title, _ in panels(series)] == ["loss", "learning rate", "grad norm"]
    assert panels(series)[1] == ("learning rate", ["train/lr"])
    assert plot_history(run) is not None and run.history.stat().st_size > 0


def test_nothing_logged_draws_nothing_and_the_command_says_so(tmp_path, capsys):
    assert plot_history(write_metrics(tmp_path / "empty", [])) is None
    assert not (tmp_path / "empty" / "history.png").exists()
    assert main([str(tmp_path / "absent")]) == 2
    assert f"{tmp_path / 'absent'}: no metrics.jsonl" in capsys.readouterr().err
    run = write_metrics(tmp_path / "run", [train_line(1)])
    assert main([str(run.root)]) == 0 and run.history.exists()
