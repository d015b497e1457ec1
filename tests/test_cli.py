"""The `tjax` command line: help, one-line user errors, and the commands on a trained workdir."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import (
    TINY_CONFIG,
    TRAINED_STEPS,
    compilation_cache,
    tiny_overrides,
)

from transformer_jax.__main__ import main
from transformer_jax.tasks.translation.pipeline import TranslationPipeline

TJAX = os.path.join(os.path.dirname(sys.executable), "tjax")


@pytest.fixture(scope="module", autouse=True)
def _jit_cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory):
        yield


def run_tjax(args, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [TJAX, *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tjax {command}: error: "), err
    return lines[0]


def listing(path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, name), path)
        for root, dirs, files in os.walk(path)
        for name in dirs + files
    )


# -- help ----------------------------------------------------------------------------------

HELP = {
    "train": ["--config", "--workdir", "--config.KEY=VALUE"],
    "eval": ["--workdir", "--split", "--step", "--averaged", "--limit", "--loss-batches"],
    "translate": ["--workdir", "--step", "--averaged", "--beam-size", "--batch-size", "truncated"],
    "average": ["--workdir", "--last"],
    "import-hf": ["--from", "--to"],
}


@pytest.mark.parametrize("command", sorted(HELP))
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tjax {command}")
    for option in HELP[command]:
        assert option in out, (command, option)


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in HELP:
        assert command in out


# -- user errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, needles",
    [
        ("--config.train.num_stepz=3", ["'train.num_stepz'", "did you mean 'train.num_steps'"]),
        ("--config.train.num_steps=abc", ["'train.num_steps'", "expects int", "'abc'"]),
        ("--config.optimizer.lr_scale=-1", ["'optimizer.lr_scale'", "must be positive"]),
        ("--config.data.tokens_per_batch=8", ["'data.tokens_per_batch'", "max_length"]),
    ],
)
def test_bad_config_override(override, needles, tmp_path, capsys):
    workdir = tmp_path / "run"
    rc = main(["train", "--config", TINY_CONFIG, "--workdir", str(workdir), override])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "train")
    for needle in needles:
        assert needle in line
    assert not workdir.exists()


def test_missing_config_file(tmp_path, capsys):
    workdir = tmp_path / "run"
    missing = str(tmp_path / "no_such_config.py")
    assert main(["train", "--config", missing, "--workdir", str(workdir)]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "config file not found" in line and missing in line
    assert not workdir.exists()


def test_unknown_dataset(tmp_path, data_dir, capsys):
    workdir = tmp_path / "run"
    overrides = [f"--config.{o}" for o in tiny_overrides(data_dir)] + ["--config.data.name=nope"]
    rc = main(["train", "--config", TINY_CONFIG, "--workdir", str(workdir), *overrides])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "'nope'" in line and "dataset" in line.lower()
    assert not (workdir / "checkpoints" / "0").exists() and not (workdir / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "argv",
    [["eval"], ["translate", "The cat sleeps."], ["average", "--last", "2"]],
    ids=["eval", "translate", "average"],
)
def test_workdir_without_checkpoint(argv, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([argv[0], "--workdir", str(empty), *argv[1:]]) == 2
    line = one_error_line(capsys.readouterr().err, argv[0])
    assert "no checkpoint" in line and str(empty) in line
    assert listing(empty) == []
    missing = tmp_path / "missing"
    assert main([argv[0], "--workdir", str(missing), *argv[1:]]) == 2
    line = one_error_line(capsys.readouterr().err, argv[0])
    assert str(missing) in line
    assert not missing.exists()


def test_error_exit_code_from_the_installed_command(tmp_path):
    workdir = tmp_path / "run"
    proc = run_tjax(
        ["train", "--config", TINY_CONFIG, "--workdir", str(workdir), "--config.train.num_stepz=3"]
    )
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr, "train")
    assert "did you mean 'train.num_steps'" in line
    assert proc.stdout == ""
    assert not workdir.exists()


# -- commands on a trained workdir ---------------------------------------------------------


def test_translate_argument(trained, capsys):
    assert main(["translate", "--workdir", trained, "The cat sleeps on the couch."]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    want = TranslationPipeline.from_workdir(trained).translate(["The cat sleeps on the couch."])
    assert out == want[0] + "\n"


def test_translate_stdin_lines_in_order(trained):
    long_line = " ".join(["cat"] * 10_000)
    lines = [
        "These ducks have the horse under those yellow beds.",
        "The cat sleeps on the couch.",
        "",
        long_line,
        "I am.",
    ]
    proc = run_tjax(
        ["translate", "--workdir", trained, "--beam-size", "1"], input="\n".join(lines) + "\n"
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines), proc.stdout
    out = out[:-1]
    pipe = TranslationPipeline.from_workdir(trained, beam_size=1)
    # Each line on its own (batch of one) gives the same text as in the batched run.
    assert out == [pipe.translate([line])[0] for line in lines]
    assert out[2] == ""
    # The long line is cut to data.max_length source tokens (eos kept).
    assert len(pipe.encode_source(long_line)) == pipe.max_source_len == 32


def test_eval_command(trained, capsys):
    rc = main(["eval", "--workdir", trained, "--split", "test", "--limit", "16"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["split"] == "test" and out["step"] == TRAINED_STEPS
    assert 0.0 <= out["test/bleu"] <= 100.0 and out["test/loss"] > 0
    assert out["path"] == os.path.join(trained, f"eval_test_step{TRAINED_STEPS}_limit16.json")
    saved = json.load(open(out["path"]))
    assert saved["test/bleu"] == out["test/bleu"] and saved["test/loss"] == out["test/loss"]


def test_average_command(trained, capsys):
    assert main(["average", "--workdir", trained, "--last", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == [TRAINED_STEPS - 4, TRAINED_STEPS]
    assert os.path.isdir(os.path.join(trained, "checkpoints_averaged", str(TRAINED_STEPS)))
    assert main(["average", "--workdir", trained, "--last", "9"]) == 2
    line = one_error_line(capsys.readouterr().err, "average")
    assert "--last 9: only 3 checkpoints" in line
    # The averaged checkpoint translates like any other.
    assert main(["translate", "--workdir", trained, "--averaged", "I am."]) == 0
    assert capsys.readouterr().out.count("\n") == 1


# -- configs by name, the demo's environment, progress of tjax eval -------------------------


def test_train_takes_a_shipped_config_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    argv = ["train", "--workdir", "run", "--config.train.num_stepz=1"]
    assert main([*argv, "--config", "translate_tiny"]) == 2
    assert "did you mean 'train.num_steps'" in one_error_line(capsys.readouterr().err, "train")
    assert main([*argv, "--config", "translate_tinyy"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "unknown config 'translate_tinyy'" in line and "translate_tiny," in line
    assert not (tmp_path / "run").exists()


def make_dry_run(target: str, venv) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        ["make", "-n", "-C", root, target, f"VENV={venv}"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_demo_installs_the_package_without_the_test_tools(tmp_path):
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    core = " ".join(project["dependencies"])
    test = " ".join(project["optional-dependencies"]["test"])
    for heavy in ("torch", "transformers", "pytest"):
        assert heavy not in core and heavy in test
    venv = tmp_path / "venv"
    demo = make_dry_run("demo", venv)
    assert "pip install -q -e . " in demo and "[test]" not in demo
    assert "transformer_jax.demo" in demo
    assert "pip install -q -e '.[test]'" in make_dry_run("test", venv)
    # `make demo`, then `make test` in the same environment: the test tools are added.
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch(mode=0o755)
    (venv / ".installed-core").touch()
    demo = make_dry_run("demo", venv)
    assert "pip install" not in demo and "transformer_jax.demo" in demo
    assert "pip install -q -e '.[test]'" in make_dry_run("test", venv)
    # After `make test`, `make demo` installs nothing more.
    (venv / ".installed").touch()
    assert "pip install" not in make_dry_run("demo", venv)


def test_eval_command_names_its_phases(trained, capsys):
    argv = ["eval", "--workdir", trained, "--split", "test", "--limit", "16"]
    assert main([*argv, "--config.train.progress=true"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # not a terminal: plain lines
    lines = err.splitlines()
    assert "decoding 0/16" in lines
    assert any(line.startswith("evaluating test loss 0/") for line in lines), err
