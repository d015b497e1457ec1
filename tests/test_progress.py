"""The console progress: redrawn in place on a terminal, plain lines elsewhere, phases named."""

import io
import re

import pytest
from helpers import compilation_cache, prepared_data_dir, tiny_config

from transformer_jax.train.metrics import Progress, log, report


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """The terminal these tests draw on is 200 columns wide, whatever runs them."""
    monkeypatch.setenv("COLUMNS", "200")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Result:
    """A step's result whose readiness the test sets (like jax.Array.is_ready)."""

    def __init__(self, ready: bool):
        self.ready = ready

    def is_ready(self) -> bool:
        return self.ready


def frames(text: str) -> list[str]:
    """What the terminal showed after each carriage return."""
    return [f.rstrip() for f in text.split("\r") if f.strip()]


def test_terminal_redraws_between_log_steps_without_waiting_for_the_device():
    out = FakeTerminal()
    with Progress(10, 0, stream=out, redraw_s=0.0) as p:
        p.phase("compiling the train step")
        p.tick(1, [[Result(False)]])  # dispatched, not finished: not counted
        p.tick(2, [[Result(True)], [Result(False)]])
        p.update(4, 100.0, {"loss": 2.5})
        p.tick(5, [])
        p.tick(7, [[Result(True)], [Result(True)], [Result(False)]])
    shown = frames(out.getvalue())
    assert "compiling the train step" in shown[0] and "step 0/10" in shown[0]
    assert "step 0/10" in shown[1] and "compiling" not in shown[1]
    assert "step 1/10" in shown[2]
    assert "step 4/10" in shown[3] and "loss=2.5" in shown[3]
    # Between log steps: the step advances, the last log step's metrics stay.
    assert "step 5/10" in shown[4] and "loss=2.5" in shown[4]
    assert "step 6/10" in shown[5] and "loss=2.5" in shown[5]
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_terminal_bar_follows_the_device_at_a_log_step():
    import jax.numpy as jnp

    out = FakeTerminal()
    p = Progress(10, 0, stream=out, redraw_s=0.0)
    p.follow(10, [{"loss": jnp.ones(())} for _ in range(3)])
    assert [re.search(r"step (\d+)/10", f).group(1) for f in frames(out.getvalue())] == [
        "8",
        "9",
        "10",
    ]
    plain = io.StringIO()
    Progress(10, 0, stream=plain, redraw_s=0.0).follow(10, [{"loss": jnp.ones(())}])
    assert plain.getvalue() == ""


def test_terminal_line_keeps_the_phase_within_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = FakeTerminal()
    with Progress(10, 0, stream=out, redraw_s=0.0) as p:
        p.update(4, 12345.0, {f"metric_{i}": 1.0 / 3 for i in range(8)})
        report("evaluating validation loss", 3, 4)
    shown = frames(out.getvalue())
    assert len(shown[0]) == 79  # the metrics are cut at the terminal's width
    assert shown[1] == "[########------------] step 4/10 | evaluating validation loss 3/4"


def test_terminal_redraws_are_rate_limited():
    out = FakeTerminal()
    p = Progress(1000, 0, stream=out, redraw_s=3600.0)
    p.update(1, 10.0, {"loss": 1.0})
    for step in range(2, 500):
        p.tick(step)
    assert len(frames(out.getvalue())) == 1


def test_a_log_message_gets_its_own_line_on_a_terminal(capsys):
    out = FakeTerminal()
    with Progress(10, 0, stream=out, redraw_s=0.0) as p:
        line = p.update(3, 1.0, {"loss": 1.0})
        log("eval at step 3")
    # The bar is erased before the message is printed, and not drawn again at the end.
    assert out.getvalue() == "\r" + line + "\r" + " " * len(line) + "\r"
    assert capsys.readouterr().out == "eval at step 3\n"


def test_plain_output_has_lines_only_and_names_the_phases():
    out = io.StringIO()
    with Progress(8, 0, stream=out, phase_every_s=3600.0) as p:
        p.phase("compiling the train step")
        for step in range(1, 5):
            p.tick(step)
        p.update(4, 100.0, {"loss": 3.0})
        for i in range(4):
            report("evaluating validation loss", i, 4)
        for n in (0, 16, 32):
            report("decoding", n, 32)
        p.update(8, 100.0, {"loss": 2.0})
        report("evaluating validation loss", 0, 4)  # the next eval: written again
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "compiling the train step"
    assert "step 4/8" in lines[1] and "loss=3" in lines[1]
    # A phase is written when it starts, then at most every phase_every_s.
    assert lines[2:4] == ["evaluating validation loss 0/4", "decoding 0/32"]
    assert "step 8/8" in lines[4] and lines[5:] == ["evaluating validation loss 0/4"]


def test_report_without_a_progress_is_silent(capsys):
    report("decoding", 1, 2)
    assert capsys.readouterr() == ("", "")


def test_quiet_when_disabled():
    out = FakeTerminal()
    with Progress(10, 0, enabled=False, stream=out, redraw_s=0.0) as p:
        p.phase("compiling the train step")
        p.tick(1)
        p.update(2, 1.0, {"loss": 1.0})
        report("decoding", 1, 2)
    assert out.getvalue() == ""


def test_training_writes_its_phases_as_plain_lines(tmp_path, tmp_path_factory, monkeypatch):
    from transformer_jax.train.trainer import train_and_evaluate

    cfg = tiny_config(
        prepared_data_dir(tmp_path_factory),
        train__num_steps=4,
        train__log_every=2,
        train__progress=True,
    )
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    with compilation_cache(tmp_path_factory):
        train_and_evaluate(cfg, str(tmp_path / "run"))
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    for phase in ("compiling the train step", "evaluating validation loss 0/1", "decoding 0/16"):
        assert phase in lines, text
    assert re.findall(r"\] step (\d+)/4", text) == ["2", "4"]
