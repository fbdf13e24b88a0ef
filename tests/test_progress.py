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


def test_meter_lines_off_a_terminal_with_the_rate_and_time_left():
    out = io.StringIO()
    meter = progress.Meter(1000, "checking train", seconds=0, stream=out)
    for _ in range(4):
        meter.update(250)
    meter.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"checking train: {n} of 1000 clips" for n in (250, 500, 750, 1000)]
    assert all("clips/s" in line for line in lines)
    assert all("left " in line for line in lines[:-1]) and "left" not in lines[-1]
    assert "\r" not in out.getvalue()


def test_meter_final_line_and_quiet_modes():
    out = io.StringIO()
    meter = progress.Meter(20, "scan", final=True, stream=out)  # 30 s apart: no line on the way
    meter.update(20)
    meter.close()
    assert len(out.getvalue().splitlines()) == 1
    assert out.getvalue().startswith("scan: 20 of 20 clips (")
    silent = io.StringIO()
    meter = progress.Meter(20, "scan", stream=silent)  # no final line unless one was printed
    meter.update(20)
    meter.close()
    off = progress.Meter(20, "scan", seconds=0, final=True, enabled=False, stream=silent)
    off.update(20)
    off.close()
    assert silent.getvalue() == ""


def test_meter_on_a_terminal_is_a_bar(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    out = Terminal()
    meter = progress.Meter(8, "checking dev", seconds=0, final=True, stream=out)
    meter.update(5)
    meter.update(3)
    meter.close()
    text = out.getvalue()
    assert "checking dev" in text and "8/8" in text and "of 8 clips" not in text


def test_meter_resumed_counts_from_its_start():
    out = io.StringIO()
    meter = progress.Meter(10, "packing", seconds=0, initial=6, stream=out)
    meter.update()
    meter.update(3)
    meter.close()
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == [
        "packing: 7 of 10 clips", "packing: 10 of 10 clips"]
