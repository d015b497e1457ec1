"""The launchers under launch/: the exact commands their --dry-run prints, and local runs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tpu_pod = load("tpu_pod")
slurm = load("slurm")
local = load("local")


def dry_run(module, argv: list[str]) -> list[list[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert module.main(argv) == 0
    return [shlex.split(line) for line in out.getvalue().splitlines()]


def usage_error(module, argv: list[str]) -> str:
    """The error line of a launcher refusing `argv`: exit status 2, nothing on stdout, and
    on stderr argparse's usage then exactly one `prog: error: ...` line, which is returned."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            module.main(argv)
    assert e.value.code == 2, err.getvalue()
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert errors == lines[-1:], err.getvalue()
    assert all(line.startswith(("usage: ", " ")) for line in lines[:-1]), err.getvalue()
    return lines[-1]


def flag(cmd: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in cmd if a.startswith(f"{name}=")]
    assert len(values) == 1, (name, cmd)
    return values[0]


# --------------------------------------------------------------------------- TPU pod

TPU = ["--name", "my-pod", "--zone", "us-central2-b", "--dry-run"]


def test_tpu_create():
    [cmd] = dry_run(
        tpu_pod,
        ["create", *TPU, "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base"],
    )
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-pod"]
    assert flag(cmd, "--zone") == "us-central2-b"
    assert flag(cmd, "--accelerator-type") == "v4-32"
    assert flag(cmd, "--version") == "tpu-ubuntu2204-base"
    assert "--spot" not in cmd and not any(a.startswith("--project") for a in cmd)

    [spot] = dry_run(
        tpu_pod,
        ["create", *TPU, "--accelerator-type", "v5litepod-16", "--spot", "--project", "p1"],
    )
    assert "--spot" in spot
    assert flag(spot, "--accelerator-type") == "v5litepod-16"
    assert flag(spot, "--project") == "p1"


def test_tpu_run_copies_installs_and_starts_on_all_workers():
    cmds = dry_run(
        tpu_pod,
        [
            "run", *TPU, "--project", "p1",
            "--config", "configs/translate_wmt14_base.py", "--workdir", "gs://bucket/runs/base",
            "--", "--config.train.num_steps=1000", "--config.train.seed=3",
        ],
    )  # fmt: skip
    pack, copy, install, start = cmds

    assert pack[:3] == ["tar", "-czf", pack[2]] and pack[-3:] == ["-C", str(REPO), "."]
    assert "--exclude=.git" in pack and "--exclude=.venv" in pack

    assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert copy[5] == pack[2]
    assert copy[6] == "my-pod:~/transformer_jax.tar.gz"
    assert "--worker=all" in copy

    for cmd in (copy, install, start):
        assert flag(cmd, "--zone") == "us-central2-b"
        assert flag(cmd, "--project") == "p1"
    for cmd in (install, start):
        assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
        assert "--worker=all" in cmd

    setup = flag(install, "--command")
    assert "tar -xzf ~/transformer_jax.tar.gz -C ~/transformer_jax" in setup
    assert "pip install -q -e . 'jax[tpu]'" in setup

    launch = flag(start, "--command")
    assert launch.startswith("cd ~/transformer_jax && ")
    assert "nohup ~/tjax-venv/bin/tjax train --config configs/translate_wmt14_base.py" in launch
    assert (
        "--workdir gs://bucket/runs/base --config.train.num_steps=1000 --config.train.seed=3"
        in launch
    )
    assert launch.endswith("> ~/tjax-train.log 2>&1 < /dev/null &")


def test_tpu_run_skip_install_only_unpacks():
    cmds = dry_run(
        tpu_pod, ["run", *TPU, "--config", "c.py", "--workdir", "gs://b/w", "--skip-install"]
    )
    setup = flag(cmds[2], "--command")
    assert "tar -xzf" in setup and "pip" not in setup


def test_tpu_ssh_and_delete():
    [ssh] = dry_run(tpu_pod, ["ssh", *TPU])
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
    assert flag(ssh, "--worker") == "0"
    [tail] = dry_run(
        tpu_pod, ["ssh", *TPU, "--worker", "all", "--command", "tail ~/tjax-train.log"]
    )
    assert flag(tail, "--worker") == "all"
    assert flag(tail, "--command") == "tail ~/tjax-train.log"

    [delete] = dry_run(tpu_pod, ["delete", *TPU])
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-pod"]
    assert flag(delete, "--zone") == "us-central2-b"
    assert "--quiet" in delete


def test_tpu_rejects_train_arguments_outside_run():
    assert usage_error(tpu_pod, ["delete", *TPU, "--", "--config.x=1"]) == (
        "launch/tpu_pod.py: error: arguments after `--` only apply to `run`: --config.x=1"
    )


# --------------------------------------------------------------------------- SLURM


def test_slurm_submit_one_process_per_gpu():
    [cmd] = dry_run(
        slurm,
        [
            "submit", "--nodes", "4", "--gpus-per-node", "8",
            "--config", "configs/translate_wmt14_big.py", "--workdir", "/shared/runs/big",
            "--partition", "gpu", "--time", "48:00:00", "--dry-run",
            "--", "--config.train.num_steps=300000",
        ],
    )  # fmt: skip
    assert cmd[0] == "sbatch"
    assert flag(cmd, "--nodes") == "4"
    assert flag(cmd, "--ntasks-per-node") == "8"
    assert flag(cmd, "--gpus-per-node") == "8"
    assert flag(cmd, "--partition") == "gpu"
    assert flag(cmd, "--time") == "48:00:00"
    assert flag(cmd, "--chdir") == str(REPO)
    assert flag(cmd, "--export") == "ALL,TJAX_PROCESS_PER=gpu"
    script = next(i for i, a in enumerate(cmd) if a.endswith("slurm_gpu.sbatch"))
    assert (REPO / "launch" / "slurm_gpu.sbatch").samefile(REPO / cmd[script])
    assert cmd[script + 1 :] == [
        "--config", "configs/translate_wmt14_big.py", "--workdir", "/shared/runs/big",
        "--config.train.num_steps=300000",
    ]  # fmt: skip


def test_slurm_submit_one_process_per_node():
    [cmd] = dry_run(
        slurm,
        [
            "submit", "--nodes", "2", "--gpus-per-node", "4", "--process-per", "node",
            "--config", "c.py", "--workdir", "/w", "--dry-run",
        ],
    )  # fmt: skip
    assert flag(cmd, "--nodes") == "2"
    assert flag(cmd, "--ntasks-per-node") == "1"
    assert flag(cmd, "--gpus-per-node") == "4"
    assert flag(cmd, "--export") == "ALL,TJAX_PROCESS_PER=node,TJAX_GPUS_PER_NODE=4"
    assert not any(a.startswith("--partition") or a.startswith("--time") for a in cmd)


SLURM = ["submit", "--config", "c", "--workdir", "w", "--dry-run"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--nodes", "1", "--gpus-per-node", "1", "--time", "two days"],
            "launch/slurm.py submit: error: argument --time: "
            "'two days' is not a SLURM time such as 24:00:00",
        ),
        (
            ["--nodes", "0", "--gpus-per-node", "1"],
            "launch/slurm.py: error: --nodes and --gpus-per-node must be >= 1",
        ),
        (
            ["--nodes", "1", "--gpus-per-node", "2", "--tjax", "a,b"],
            "launch/slurm.py: error: --tjax must not contain a comma "
            "(sbatch --export splits on commas)",
        ),
    ],
)
def test_slurm_refuses_bad_arguments_with_one_error_line(argv, message):
    assert usage_error(slurm, [*SLURM, *argv]) == message


def test_sbatch_script_runs_tjax_under_srun():
    text = (LAUNCH / "slurm_gpu.sbatch").read_text()
    for directive in ("--nodes=", "--ntasks-per-node=", "--gpus-per-node="):
        assert f"#SBATCH {directive}" in text
    assert 'srun --kill-on-bad-exit=1 "$TJAX_BIN" train "$@"' in text
    assert subprocess.run(["bash", "-n", str(LAUNCH / "slurm_gpu.sbatch")]).returncode == 0


# --------------------------------------------------------------------------- local


def test_local_dry_run_lists_every_host():
    cmds = dry_run(
        local,
        [
            "--num-processes", "3", "--devices-per-process", "2", "--port", "23456",
            "--config", "configs/translate_tiny.py", "--workdir", "runs/local",
            "--tjax", "tjax", "--dry-run", "--", "--config.train.num_steps=5",
        ],
    )  # fmt: skip
    assert len(cmds) == 3
    for i, cmd in enumerate(cmds):
        assert cmd[0] == "env"
        env = dict(a.split("=", 1) for a in cmd[1:6])
        assert env == {
            "TJAX_COORDINATOR": "127.0.0.1:23456",
            "TJAX_NUM_PROCESSES": "3",
            "TJAX_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        }
        assert cmd[6:] == [
            "tjax", "train", "--config", "configs/translate_tiny.py",
            "--workdir", "runs/local", "--config.train.num_steps=5",
        ]  # fmt: skip


def test_local_keeps_other_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8")
    cmds = dry_run(
        local, ["-n", "1", "--config", "c", "--workdir", "w", "--port", "1", "--dry-run"]
    )
    env = dict(a.split("=", 1) for a in cmds[0][1:6])
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=1"


@pytest.mark.parametrize("option", ["--num-processes", "--devices-per-process"])
def test_local_refuses_fewer_than_one_with_one_error_line(option):
    argv = ["-n", "2", "--config", "c", "--workdir", "w", "--dry-run", option, "0"]
    assert usage_error(local, argv) == (
        "launch/local.py: error: --num-processes and --devices-per-process must be >= 1"
    )


def test_local_run_prefixes_output_and_stops_the_rest_on_failure():
    def py(code: str) -> list[str]:
        return [sys.executable, "-c", textwrap.dedent(code)]

    commands = [
        ({"WHO": "a"}, py("import os; print('hello from', os.environ['WHO'])")),
        ({}, py("import sys, time; time.sleep(0.5); print('failing'); sys.exit(3)")),
        ({}, py("import time; print('sleeping', flush=True); time.sleep(60)")),
    ]
    out = io.StringIO()
    start = time.monotonic()
    rc = local.run_all(commands, stream=out)
    assert rc == 3
    assert time.monotonic() - start < 20
    lines = out.getvalue().splitlines()
    assert "[host 0] hello from a" in lines
    assert "[host 1] failing" in lines
    assert "[host 2] sleeping" in lines
    assert any(line.startswith("[launch] host 1 exited with status 3") for line in lines)


def test_local_runs_hosts_that_join_one_job(tmp_path):
    """The launcher's environment really makes N processes into one JAX job."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            """
            import sys
            from transformer_jax.train import distributed

            distributed.initialize()
            import jax

            print(sys.argv[1:3], distributed.describe())
            """
        )
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = local.main(
            [
                "-n", "2", "--devices-per-process", "2", "--timeout", "60",
                "--tjax", f"{sys.executable} {worker}",
                "--config", "c.py", "--workdir", str(tmp_path),
            ]
        )  # fmt: skip
    text = out.getvalue()
    assert rc == 0, text
    for i in range(2):
        assert f"[host {i}] ['train', '--config'] process {i} of 2: 2 local / 4 global cpu" in text
