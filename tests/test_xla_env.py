"""The XLA flags the launchers give GPU and TPU jobs: merged with the user's, opt-out,
each GPU flag known to the installed XLA, and what the launchers actually pass."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import TPU, dry_run, flag, tpu_pod

from transformer_jax import xla_env

REPO = Path(__file__).resolve().parent.parent


def test_flags_the_user_names_are_kept_and_the_others_added():
    given = "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d"
    out = shlex.split(xla_env.merged(given, xla_env.GPU_XLA_FLAGS))
    assert out[:2] == shlex.split(given)  # the user's, first and unchanged
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" not in out
    assert out[2:] == list(xla_env.GPU_XLA_FLAGS[1:])
    assert xla_env.merged("", xla_env.GPU_XLA_FLAGS) == " ".join(xla_env.GPU_XLA_FLAGS)


def test_opt_out_and_bad_values():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d", "TJAX_XLA_FLAGS": "default"}
    assert xla_env.tuned("gpu", env) == ("XLA_FLAGS", "--xla_dump_to=/tmp/d")
    var, value = xla_env.tuned("tpu", {})
    assert var == "LIBTPU_INIT_ARGS" and value.split() == list(xla_env.TPU_LIBTPU_ARGS)
    with pytest.raises(ValueError, match="TJAX_XLA_FLAGS must be tuned or default"):
        xla_env.tuned("gpu", {"TJAX_XLA_FLAGS": "fast"})
    with pytest.raises(ValueError, match="platform must be one of gpu, tpu"):
        xla_env.tuned("cuda", {})


def _xla_accepts(flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    code = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_every_gpu_flag_is_known_to_the_installed_xla():
    """XLA parses every backend's flags at start and aborts on an unknown one, so a
    misspelt flag fails here on the CPU too (the control shows that it would)."""
    ok = _xla_accepts(" ".join(xla_env.GPU_XLA_FLAGS))
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = _xla_accepts("--xla_gpu_enable_latency_hiding_schedular=true")
    assert bad.returncode != 0 and "Unknown flag" in bad.stderr


def test_the_module_prints_the_variable_for_a_shell():
    env = dict(os.environ, XLA_FLAGS="--xla_dump_to=/tmp/d")
    env.pop("TJAX_XLA_FLAGS", None)
    run = [sys.executable, "-m", "transformer_jax.xla_env"]
    out = subprocess.run([*run, "gpu"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["--xla_dump_to=/tmp/d", *xla_env.GPU_XLA_FLAGS]
    bad = subprocess.run([*run, "rocm"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_tpu_workers_start_with_the_collective_flags(monkeypatch):
    monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_tpu_enable_async_collective_fusion=false")
    monkeypatch.delenv("TJAX_XLA_FLAGS", raising=False)
    *_, start = dry_run(tpu_pod, ["run", *TPU, "--config", "c.py", "--workdir", "gs://b/r"])
    launch = flag(start, "--command")
    words = shlex.split(launch.split("&& ", 1)[1])
    assert words[0].startswith("LIBTPU_INIT_ARGS=") and words[1:3] == ["setsid", "nohup"]
    args = words[0].split("=", 1)[1].split()
    assert args[0] == "--xla_tpu_enable_async_collective_fusion=false"  # the user's kept
    assert args[1:] == list(xla_env.TPU_LIBTPU_ARGS[1:])
    monkeypatch.setenv("TJAX_XLA_FLAGS", "default")
    monkeypatch.delenv("LIBTPU_INIT_ARGS")
    *_, start = dry_run(tpu_pod, ["run", *TPU, "--config", "c.py", "--workdir", "gs://b/r"])
    assert "LIBTPU_INIT_ARGS" not in flag(start, "--command")


def test_the_slurm_script_exports_the_gpu_flags(tmp_path):
    """slurm_gpu.sbatch run by bash with a stand-in srun that prints what it was given."""
    srun = tmp_path / "srun"
    srun.write_text('#!/bin/sh\necho "XLA_FLAGS=$XLA_FLAGS"\necho "ARGS=$*"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = dict(
        os.environ,
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        TJAX_BIN=str(Path(sys.executable).parent / "tjax"),
        XLA_FLAGS="--xla_dump_to=/tmp/d",
    )
    env.pop("TJAX_XLA_FLAGS", None)
    script = REPO / "launch" / "slurm_gpu.sbatch"
    out = subprocess.run(
        ["bash", str(script), "--config", "c.py", "--workdir", "w"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert lines["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/d", *xla_env.GPU_XLA_FLAGS]
    assert lines["ARGS"].endswith("train --config c.py --workdir w")
