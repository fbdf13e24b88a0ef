"""Tests for progress.py: a bar on a terminal, plain periodic lines elsewhere, nothing when off."""
import io

import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_every_n_items_and_at_the_end_with_their_figures():
    out = io.StringIO()
    seen = list(progress.track(range(7), 7, "Epoch: [0/2]", 3, stats=lambda: {"loss": 2.5},
                               per_item=4, stream=out))
    assert seen == list(range(7))
    lines = out.getvalue().splitlines()
    assert [line.split("]")[1] for line in lines] == [" [1/7", " [4/7", " [7/7"]
    for line in lines:
        assert "loss: 2.5" in line and "s/it" in line and "data " in line
        assert "clips/s" in line and "left " in line and "GB" in line
    assert "left 0:00:00" in lines[-1]


def test_a_terminal_gets_a_bar_and_no_lines(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    out = Terminal()
    assert list(progress.track(range(4), 4, "Test:", 1, stream=out)) == [0, 1, 2, 3]
    text = out.getvalue()
    assert "\rTest:" in text and "/4 [" in text and "[1/4]" not in text


def test_other_ranks_report_nothing():
    out = Terminal()
    assert list(progress.track(range(3), 3, "Test:", 1, show=False, stream=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_a_loop_left_early_closes_its_bar():
    from tqdm import tqdm
    for item in progress.track(range(10), 10, "Epoch:", 1, stream=Terminal()):
        if item == 2:
            break
    assert not tqdm._instances
