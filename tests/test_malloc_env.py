"""The malloc tunables the `tjax` program gives itself (transformer_jax.malloc_env)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from transformer_jax import malloc_env
from transformer_jax.malloc_env import MARKER_VAR, tuned_environ

HUGETLB = "glibc.malloc.hugetlb=1"
TJAX = os.path.join(os.path.dirname(sys.executable), "tjax")


def test_adds_the_tunable_and_a_marker():
    env = tuned_environ({"PATH": "/bin"}, glibc=(2, 36))
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": HUGETLB, MARKER_VAR: "1"}


def test_a_users_tunables_are_kept_and_extended():
    env = tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc=(2, 36))
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGETLB}"


def test_a_tunable_the_user_set_is_left_as_set():
    for value in ("glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"):
        assert tuned_environ({"GLIBC_TUNABLES": value}, glibc=(2, 36)) is None


@pytest.mark.parametrize("value", ["default", "DEFAULT", " default "])
def test_opt_out(value):
    assert tuned_environ({"TJAX_MALLOC": value}, glibc=(2, 36)) is None
    assert tuned_environ({"TJAX_MALLOC": "tuned"}, glibc=(2, 36)) is not None


def test_unknown_choice_is_an_error():
    with pytest.raises(ValueError, match="TJAX_MALLOC must be one of tuned, default, got 'off!'"):
        tuned_environ({"TJAX_MALLOC": "off!"}, glibc=(2, 36))


def test_other_c_libraries_and_old_glibc_are_left_alone():
    assert tuned_environ({"PATH": "/bin"}, glibc=None) is None  # musl, macOS, ...
    assert tuned_environ({"PATH": "/bin"}, glibc=(2, 34)) is None  # before hugetlb existed


def test_never_twice():
    assert tuned_environ({MARKER_VAR: "1"}, glibc=(2, 36)) is None


class Reexecuted(Exception):
    pass


@pytest.fixture
def as_entry_point(monkeypatch):
    """This interpreter passes for the `tjax` program; os.execve raises Reexecuted."""

    def execve(path, argv, env):
        raise Reexecuted(argv, env.get("GLIBC_TUNABLES"))

    monkeypatch.setattr(malloc_env, "_is_entry_point", lambda *a: True)
    monkeypatch.setattr(malloc_env, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(malloc_env.sys, "platform", "linux")
    monkeypatch.setattr(malloc_env.os, "execve", execve)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(MARKER_VAR, raising=False)
    monkeypatch.delenv("TJAX_MALLOC", raising=False)


def test_in_process_main_does_not_reexecute(as_entry_point, capsys):
    from transformer_jax.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "usage: tjax" in capsys.readouterr().out


def test_the_program_reexecutes(as_entry_point, monkeypatch):
    from transformer_jax.__main__ import main

    monkeypatch.setattr(sys, "orig_argv", ["python", "/bin/tjax", "--help"])
    with pytest.raises(Reexecuted) as e:
        main()
    assert e.value.args == (["python", "/bin/tjax", "--help"], HUGETLB)


# Every start of a Python interpreter appends its command line and GLIBC_TUNABLES to a
# file, before any project code runs. The raw /proc/self/environ (the environment the
# kernel started the process with) is checked too: the dynamic loader reads the tunables
# there, and cuts that copy at each ":" as it parses it, so only the presence of the
# string is recorded.
SITECUSTOMIZE = """
import json, os, sys
with open("/proc/self/environ", "rb") as f:
    raw = f.read()
with open(os.environ["MALLOC_TEST_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.orig_argv, "pid": os.getpid(),
                        "tunables": os.environ.get("GLIBC_TUNABLES", ""),
                        "hugetlb_at_exec": b"glibc.malloc.hugetlb=1" in raw}) + "\\n")
"""


def _starts(tmp_path, cmd, **env_changes):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "starts.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MARKER_VAR)}
    env.update(PYTHONPATH=str(tmp_path), MALLOC_TEST_LOG=str(log), **env_changes)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    return proc, starts


needs_glibc = pytest.mark.skipif(
    sys.platform != "linux" or (malloc_env.glibc_version() or (0, 0)) < (2, 35),
    reason="glibc >= 2.35 on Linux only",
)


@needs_glibc
def test_tjax_restarts_once_with_the_tunable(tmp_path):
    proc, starts = _starts(tmp_path, [TJAX, "--help"], GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    assert proc.returncode == 0, proc.stderr
    assert "usage: tjax" in proc.stdout
    assert len(starts) == 2  # the command as started, then once re-executed
    first, second = starts
    assert first["tunables"] == "glibc.malloc.arena_max=4"
    assert second["tunables"] == f"glibc.malloc.arena_max=4:{HUGETLB}"
    assert not first["hugetlb_at_exec"] and second["hugetlb_at_exec"]
    assert second["pid"] == first["pid"]  # replaced in place: signals and waits still apply
    assert second["argv"] == first["argv"] and first["argv"][1:] == [TJAX, "--help"]


@needs_glibc
def test_exit_status_passes_through(tmp_path):
    proc, starts = _starts(tmp_path, [TJAX, "no-such-command"])
    assert proc.returncode == 2
    assert "invalid choice: 'no-such-command'" in proc.stderr
    assert [s["tunables"] for s in starts] == ["", HUGETLB]


@needs_glibc
def test_python_dash_m_restarts_too(tmp_path):
    cmd = [sys.executable, "-m", "transformer_jax", "--help"]
    proc, starts = _starts(tmp_path, cmd)
    assert proc.returncode == 0, proc.stderr
    assert [s["tunables"] for s in starts] == ["", HUGETLB]
    assert starts[1]["argv"][1:] == ["-m", "transformer_jax", "--help"]


@needs_glibc
def test_opt_out_runs_once_untouched(tmp_path):
    proc, starts = _starts(tmp_path, [TJAX, "--help"], TJAX_MALLOC="default")
    assert proc.returncode == 0, proc.stderr
    assert [s["tunables"] for s in starts] == [""]


@needs_glibc
def test_bad_opt_out_value_is_one_line_exit_2(tmp_path):
    proc, starts = _starts(tmp_path, [TJAX, "--help"], TJAX_MALLOC="fast")
    assert proc.returncode == 2
    assert proc.stderr == "tjax: error: TJAX_MALLOC must be one of tuned, default, got 'fast'\n"
    assert len(starts) == 1
