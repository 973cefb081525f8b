"""Progress reporting: plain lines (a tenth of the way each) when not on a terminal, a bar on one, and the
training tracker's bar with loss and tokens/s."""

import io

from trainer.progress import StepBar, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_tenth_of_the_way_when_not_on_a_terminal():
    stream = io.StringIO()
    assert list(progress(range(25), 25, "merge", "tensor", stream)) == list(range(25))
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{n}/25" for n in (3, 6, 9, 12, 15, 18, 21, 24, 25)]
    assert lines[0].startswith("[merge] 3/25 tensors")


def test_a_bar_on_a_terminal():
    stream = Terminal()
    assert list(progress(iter(range(7)), 7, "verify", "sample", stream)) == list(range(7))
    assert "verify" in stream.getvalue() and "7/7" in stream.getvalue()


def test_the_training_bar_shows_steps_loss_and_tokens_per_second():
    stream = Terminal()
    bar = StepBar(total=10, initial=4, stream=stream)
    bar.update(6, {"train/loss": 0.25, "perf/tokens_per_s": 1234.0})
    bar.close()
    text = stream.getvalue()
    assert "6/10" in text and "loss=0.2500" in text and "tok/s=1234" in text
