"""The everyday console: how a run was started (recorded, printed), every command's
--help with its defaults, the progress of long evaluations and decodes."""

import argparse
import io
import json
import os
import re

import jax
import pytest
from helpers import TINY_CONFIG, compilation_cache, tiny_overrides

from transformer_jax.__main__ import build_parser, main
from transformer_jax.config import format_config, load_config
from transformer_jax.train import workdir as workdir_lib
from transformer_jax.train.metrics import Progress, log, report


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """time.perf_counter under the test's control."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- how a run was started -----------------------------------------------------------------


def test_format_config_marks_the_overridden_keys():
    cfg = load_config("translate_tiny", ["train.num_steps=3", "model.d_model=64"])
    text = format_config(cfg, ["train.num_steps=3", "model.d_model=64"], "translate_tiny")
    lines = text.splitlines()
    assert lines[0] == "config translate_tiny (* = overridden on the command line):"
    assert "  train.num_steps = 3 *" in lines and "  model.d_model = 64 *" in lines
    assert f"  seed = {cfg.seed!r}" in lines  # not overridden: not marked
    body = lines[1:]
    assert body == sorted(body) and len(body) == len(workdir_lib.flatten(cfg.to_dict()))
    assert sum(line.endswith(" *") for line in body) == 2


def test_a_start_is_recorded_and_printed_on_host_0_only(tmp_path, monkeypatch, capsys):
    command = {"config": "translate_tiny", "overrides": ["seed=1"], "argv": ["tjax", "train"]}
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    workdir_lib.record_start(str(tmp_path), 0, command)
    log(format_config(load_config("translate_tiny"), ["seed=1"]))
    assert not (tmp_path / workdir_lib.STARTS_FILE).exists()
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    workdir_lib.record_start(str(tmp_path), 0, command)
    workdir_lib.record_start(str(tmp_path), 8, None)  # from Python: no command
    starts = workdir_lib.read_starts(str(tmp_path))
    assert [s["step"] for s in starts] == [0, 8]
    assert starts[0]["config"] == "translate_tiny" and starts[0]["overrides"] == ["seed=1"]
    assert starts[0]["argv"] == ["tjax", "train"] and starts[1]["argv"] is None


def test_train_records_each_start_and_prints_the_config(
    tmp_path, tmp_path_factory, data_dir, capsys
):
    from transformer_jax.train.runinfo import format_run_info, run_info

    workdir = str(tmp_path / "run")
    overrides = tiny_overrides(data_dir, train__num_steps=2, train__checkpoint_every=2)
    argv = ["train", "--config", TINY_CONFIG, "--workdir", workdir]
    argv += [f"--config.{o}" for o in overrides]
    with compilation_cache(tmp_path_factory):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"config {TINY_CONFIG} (* = overridden on the command line):" in out
        assert "  train.num_steps = 2 *" in out.splitlines()
        assert "  model.d_model = 32 *" in out.splitlines()
        assert re.search(r"^  seed = \d+$", out, re.M)  # a key left as it is: no mark
        resume = [a for a in argv if "num_steps" not in a] + ["--config.train.num_steps=4"]
        assert main(resume) == 0
        assert "  train.num_steps = 4 *" in capsys.readouterr().out.splitlines()
    starts = [json.loads(line) for line in open(os.path.join(workdir, "starts.jsonl"))]
    assert [s["step"] for s in starts] == [0, 2]  # a line per start, also the resume
    assert starts[0]["config"] == TINY_CONFIG
    assert starts[0]["config_file"] == os.path.abspath(TINY_CONFIG)
    assert starts[0]["overrides"] == overrides and starts[0]["argv"] == ["tjax", *argv]
    assert starts[1]["argv"] == ["tjax", *resume]
    # The config history keeps its format: a line per effective config.
    history = workdir_lib.read_history(workdir)
    assert [h["step"] for h in history] == [0, 2]
    assert history[1]["changes"] == {"train.num_steps": [2, 4]}
    info = run_info(workdir)
    assert info["config"]["command"]["argv"] == ["tjax", *argv]
    assert info["config"]["last_command"]["argv"] == ["tjax", *resume]
    assert info["config"]["overrides"] == overrides
    assert info["config"]["closest_shipped"] is None  # recorded, not inferred
    text = format_run_info(info)
    assert f"as:           tjax train --config {TINY_CONFIG} --workdir {workdir}" in text


# -- --help shows every default ------------------------------------------------------------


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def _options(command: str) -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [
        a
        for a in sub.choices[command]._actions
        if a.option_strings and not a.required and a.nargs != 0
    ]


def _blocks(help_text: str) -> dict[str, str]:
    """option string -> its help entry, whitespace collapsed."""
    body = help_text.split("options:", 1)[1]
    out = {}
    for entry in re.split(r"\n(?=  -)", body):
        head = entry.strip().split("  ")[0]  # "-h, --help" or "--limit LIMIT"
        for option in re.findall(r"--?[\w-]+", head):
            out[option] = " ".join(entry.split())
    return out


def test_every_command_is_walked():
    commands = _commands()
    for name in ("train", "eval", "average", "translate", "classify", "generate", "describe"):
        assert name in commands


@pytest.mark.parametrize("command", _commands())
def test_help_shows_every_default(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    blocks = _blocks(capsys.readouterr().out)
    for action in _options(command):
        option = action.option_strings[-1]
        block = blocks.get(option)
        assert block is not None, (command, option, blocks)
        assert "default" in block.lower(), (command, option, block)
        if action.default not in (None, "") and "%(default)" in (action.help or ""):
            assert f"(default: {action.default})" in block, (command, option, block)


def test_help_default_is_the_value_argparse_uses(capsys):
    with pytest.raises(SystemExit):
        main(["average", "--help"])
    assert "(default: 5)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--limit LIMIT score only the first N examples (0 = all) (default: 0)" in text
    assert "--step STEP default: the latest checkpoint" in text
    with pytest.raises(SystemExit):
        main(["translate", "--help"])  # a task's verb: the shared text for --step
    text = " ".join(capsys.readouterr().out.split())
    assert "--step STEP (default: the latest checkpoint)" in text


# -- progress of long evaluations and decodes ----------------------------------------------


def test_phase_bar_has_rate_and_eta_on_a_terminal():
    clock = Clock()
    out = FakeTerminal()
    with Progress(None, stream=out, redraw_s=0.0, clock=clock):
        report("decoding", 0, 100)
        clock.now += 10.0
        report("decoding", 25, 100)
    frames = [f.rstrip() for f in out.getvalue().split("\r") if f.strip()]
    assert frames[0] == "[--------------------] decoding 0/100"
    # 25 in 10 s: 2.5/s, 75 left: 30 s.
    assert frames[1] == "[#####---------------] decoding 25/100 2.50/s ETA 0:00:30"


def test_phase_during_training_has_rate_and_eta():
    clock = Clock()
    out = FakeTerminal()
    with Progress(10, 0, stream=out, redraw_s=0.0, clock=clock) as p:
        p.update(4, 100.0, {"loss": 2.5})
        report("evaluating validation loss", 0, 4)
        clock.now += 2.0
        report("evaluating validation loss", 1, 4)
    last = [f.rstrip() for f in out.getvalue().split("\r") if f.strip()][-1]
    assert last == (
        "[########------------] step 4/10 | evaluating validation loss 1/4 0.50/s ETA 0:00:06"
    )


def test_phase_plain_lines_are_periodic_when_not_a_terminal():
    clock = Clock()
    out = io.StringIO()
    with Progress(None, stream=out, phase_every_s=30.0, clock=clock):
        for i in range(0, 101):
            report("decoding", i, 100)
            clock.now += 1.0  # 1 item/s: a line when it starts, then every 30 s
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == [
        "decoding 0/100",
        "decoding 30/100 1.00/s ETA 0:01:10",
        "decoding 60/100 1.00/s ETA 0:00:40",
        "decoding 90/100 1.00/s ETA 0:00:10",
    ]


def test_phase_prints_nothing_on_other_hosts(monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    for out in (io.StringIO(), FakeTerminal()):
        with Progress(None, stream=out, redraw_s=0.0, phase_every_s=0.0):
            for i in range(5):
                report("evaluating test loss", i, 4)
        assert out.getvalue() == ""


def test_generation_reports_its_batches():
    from test_generation_decoding import BOS, config, init_params

    from transformer_jax.tasks.generation.decoding import Generator

    cfg = config("gpt")
    gen = Generator(cfg, init_params(cfg), batch_size=4)
    out = io.StringIO()
    with Progress(None, stream=out, phase_every_s=0.0):
        gen.generate_ids([[BOS, 3 + i] for i in range(6)], max_new_tokens=2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "generating 0/6"
    assert [line.split("/")[0] for line in lines[1:]] == ["generating 4", "generating 6"]
    assert re.fullmatch(r"generating 6/6 [\d.]+/s ETA 0:00:00", lines[-1]), lines
