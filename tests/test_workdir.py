"""One training run per workdir (the lock), the record of a run's configs, kept evaluations."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest
from helpers import (
    TINY_CONFIG,
    TRAINED_STEPS,
    compilation_cache,
    proc_env,
    tiny_config,
    tiny_overrides,
    train,
)

from transformer_jax.__main__ import main
from transformer_jax.config import ConfigError
from transformer_jax.train import workdir as workdir_lib
from transformer_jax.train.evaluation import InferenceSetup, eval_config, evaluate_checkpoint
from transformer_jax.train.preemption import Preempted
from transformer_jax.train.sharding import MeshError
from transformer_jax.train.workdir import WorkdirInUse, WorkdirLock

# The settings the session's trained workdir was made with (helpers.trained_workdir).
TRAINED = dict(train__num_steps=TRAINED_STEPS, train__checkpoint_every=4, train__keep_checkpoints=3)


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tjax {command}: error: "), err
    return lines[0]


def copy_run(trained: str, dst) -> str:
    """The trained workdir's checkpoints and configs (no evaluations, no averages)."""
    shutil.copytree(
        trained,
        dst,
        ignore=shutil.ignore_patterns("checkpoints_averaged", "eval_*.json", "*.tmp", ".lock"),
    )
    return str(dst)


def holder(**changes) -> str:
    """A lock file's content, as another run would have written it."""
    info = dict(
        host="other-host",
        pid=1,
        started="2025-01-02T12:00:01+00:00",
        heartbeat=time.time(),
        token="someone-else",
    )
    return json.dumps(dict(info, **changes))


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


# -- the lock ------------------------------------------------------------------------------


def test_a_second_run_is_refused_with_one_line_naming_the_holder(tmp_path):
    lock_file = tmp_path / ".lock"
    with WorkdirLock(str(tmp_path)) as lock:
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirInUse) as e:
            with WorkdirLock(str(tmp_path)):
                pytest.fail("a second lock on a held workdir")
        message = str(e.value)
        assert "\n" not in message
        since = lock.info["started"].replace("T", " ")
        assert f"is in use by pid {os.getpid()} on host {socket.gethostname()} since {since}" in (
            message
        )
        assert f"lock file {lock_file}" in message
        # Other processes of a multi-host job do not take the lock.
        with WorkdirLock(str(tmp_path), primary=False):
            pass
        assert json.loads(lock_file.read_text())["token"] == lock.info["token"]
    assert not lock_file.exists()
    with WorkdirLock(str(tmp_path)):  # free again
        pass


def test_the_lock_is_released_on_errors_and_preemption(tmp_path):
    for error in (RuntimeError("boom"), Preempted("stopped at step 3")):
        with pytest.raises(type(error)):
            with WorkdirLock(str(tmp_path)):
                raise error
        assert not (tmp_path / ".lock").exists()
    # A workdir the lock created is removed again when the run left nothing in it.
    fresh = tmp_path / "fresh"
    with WorkdirLock(str(fresh)):
        assert fresh.is_dir()
    assert not fresh.exists()


HOLD = """
import sys, time
from transformer_jax.train.workdir import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_killed_run_leaves_a_stale_lock_that_is_taken_over(tmp_path, capsys):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=proc_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirInUse, match=f"in use by pid {proc.pid} on host "):
            with WorkdirLock(str(tmp_path)):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / ".lock").exists()  # SIGKILL: nothing cleaned up
    with WorkdirLock(str(tmp_path)) as lock:
        assert json.loads((tmp_path / ".lock").read_text())["token"] == lock.info["token"]
    out = capsys.readouterr().out
    assert f"taking over the stale lock {tmp_path / '.lock'} of pid {proc.pid}" in out
    assert "that process no longer runs" in out


def test_flock_still_respects_a_fresh_heartbeat_from_another_host(tmp_path, capsys):
    """flock over NFS may not reach other hosts: their heartbeat decides."""
    lock_file = tmp_path / ".lock"
    lock_file.write_text(holder())
    with pytest.raises(WorkdirInUse, match="pid 1 on host other-host since 2025-01-02 12:00:01"):
        with WorkdirLock(str(tmp_path)):
            pass
    lock_file.write_text(holder(heartbeat=time.time() - 400))
    with WorkdirLock(str(tmp_path)):
        pass
    assert "of pid 1 on host other-host" in capsys.readouterr().out


@pytest.mark.parametrize("remote", [False, True], ids=["no-flock", "object-store"])
def test_without_flock_the_heartbeat_decides(remote, tmp_path, monkeypatch, capsys):
    if remote:  # gs://-style: every read and write goes through etils.epath
        monkeypatch.setattr(workdir_lib.paths, "is_remote", lambda path: True)
    else:
        monkeypatch.setattr(workdir_lib, "fcntl", None)
    lock_file = tmp_path / ".lock"
    lock = lambda: WorkdirLock(str(tmp_path), settle_s=0.0)  # noqa: E731
    # A live run on another host.
    lock_file.write_text(holder())
    with pytest.raises(WorkdirInUse, match="pid 1 on host other-host since 2025-01-02 12:00:01"):
        with lock():
            pass
    # Its heartbeat stopped minutes ago: taken over.
    lock_file.write_text(holder(heartbeat=time.time() - 400))
    with lock() as held:
        assert json.loads(lock_file.read_text())["token"] == held.info["token"]
        with pytest.raises(WorkdirInUse, match=f"in use by pid {os.getpid()} "):
            with lock():
                pass
    assert re.search(r"no heartbeat for 40\d s", capsys.readouterr().out)
    assert not lock_file.exists()
    # A process of this host that no longer runs, heartbeat still fresh.
    pid = dead_pid()
    lock_file.write_text(holder(host=socket.gethostname(), pid=pid))
    with lock():
        pass
    assert f"of pid {pid} on host {socket.gethostname()}" in capsys.readouterr().out


def test_the_heartbeat_is_refreshed_and_a_takeover_is_noticed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(workdir_lib, "fcntl", None)
    lock_file = tmp_path / ".lock"
    with WorkdirLock(str(tmp_path), heartbeat_s=0.05, settle_s=0.0) as lock:
        first = json.loads(lock_file.read_text())["heartbeat"]
        deadline = time.time() + 60
        while json.loads(lock_file.read_text() or "{}").get("heartbeat", first) <= first:
            assert time.time() < deadline, "the heartbeat was not refreshed"
            time.sleep(0.05)
        # Another run took the lock over. Without flock a beat that read the file just before
        # the takeover can write over it once; the other run's own heartbeat rewrites it, as here.
        while not lock.lost:
            assert time.time() < deadline, "the takeover went unnoticed"
            if json.loads(lock_file.read_text() or "{}").get("token") != "someone-else":
                lock_file.write_text(holder())
            time.sleep(0.05)
    assert json.loads(lock_file.read_text())["token"] == "someone-else"  # not removed
    assert "was taken over by pid 1 on host other-host" in capsys.readouterr().out


def test_train_refuses_a_held_workdir_and_writes_nothing(tmp_path, data_dir, capsys):
    workdir = tmp_path / "run"
    overrides = [f"--config.{o}" for o in tiny_overrides(data_dir)]
    with WorkdirLock(str(workdir)):
        rc = main(["train", "--config", TINY_CONFIG, "--workdir", str(workdir), *overrides])
        assert rc == 2
        line = one_error_line(capsys.readouterr().err, "train")
        assert f"workdir {workdir} is in use by pid {os.getpid()} on host" in line
        assert sorted(os.listdir(workdir)) == [".lock"]


# -- config.json and its history -----------------------------------------------------------


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_a_fresh_run_records_its_config(trained, data_dir):
    history = workdir_lib.read_history(trained)
    assert [h["step"] for h in history] == [0]
    want = json.loads(json.dumps(tiny_config(data_dir, **TRAINED).to_dict()))
    assert history[0]["config"] == want and history[0]["changes"] == {}
    assert read_json(os.path.join(trained, "config.json")) == want
    assert not os.path.exists(os.path.join(trained, ".lock"))


def test_a_finished_run_refuses_a_changed_config(
    trained, data_dir, tmp_path, tmp_path_factory, capsys
):
    workdir = copy_run(trained, tmp_path / "run")
    config_json = open(os.path.join(workdir, "config.json")).read()
    history = open(os.path.join(workdir, "config_history.jsonl")).read()

    def tjax_train(**extra) -> int:
        overrides = [f"--config.{o}" for o in tiny_overrides(data_dir, **TRAINED, **extra)]
        return main(["train", "--config", TINY_CONFIG, "--workdir", workdir, *overrides])

    with compilation_cache(tmp_path_factory):
        assert tjax_train(train__grad_accum_steps=7) == 2
        line = one_error_line(capsys.readouterr().err, "train")
        assert f"the run in {workdir} is finished (step {TRAINED_STEPS}" in line
        assert "train.grad_accum_steps 1 -> 7" in line
        assert open(os.path.join(workdir, "config.json")).read() == config_json
        assert open(os.path.join(workdir, "config_history.jsonl")).read() == history
        # The same config: nothing to do, and nothing rewritten differently.
        assert tjax_train() == 0
    assert open(os.path.join(workdir, "config.json")).read() == config_json
    assert open(os.path.join(workdir, "config_history.jsonl")).read() == history
    assert not os.path.exists(os.path.join(workdir, ".lock"))


def test_a_config_that_fails_on_the_first_batch_is_not_recorded(
    trained, data_dir, tmp_path, tmp_path_factory
):
    workdir = copy_run(trained, tmp_path / "run")
    config_json = open(os.path.join(workdir, "config.json")).read()
    cfg = tiny_config(
        data_dir, **dict(TRAINED, train__num_steps=TRAINED_STEPS + 2, train__grad_accum_steps=7)
    )
    with pytest.raises(MeshError, match="train.grad_accum_steps 7"):
        train(cfg, workdir, tmp_path_factory)
    assert open(os.path.join(workdir, "config.json")).read() == config_json
    assert [h["step"] for h in workdir_lib.read_history(workdir)] == [0]


def test_a_resumed_run_with_a_new_config_keeps_the_earlier_one(
    trained, data_dir, tmp_path, tmp_path_factory
):
    workdir = copy_run(trained, tmp_path / "run")
    original = read_json(os.path.join(workdir, "config.json"))
    more = dict(TRAINED, train__num_steps=TRAINED_STEPS + 2, decode__bleu_examples=2)
    cfg = tiny_config(data_dir, **more)
    train(cfg, workdir, tmp_path_factory)
    now = json.loads(json.dumps(cfg.to_dict()))
    assert read_json(os.path.join(workdir, "config.json")) == now
    history = workdir_lib.read_history(workdir)
    assert [h["step"] for h in history] == [0, TRAINED_STEPS]
    assert history[0]["config"] == original and history[1]["config"] == now
    assert history[1]["changes"] == {
        "decode.bleu_examples": [16, 2],
        "train.num_steps": [TRAINED_STEPS, TRAINED_STEPS + 2],
    }


# -- evaluation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_copy(trained, tmp_path_factory):
    """A copy of the trained workdir that this module's evaluations write into."""
    return copy_run(trained, tmp_path_factory.mktemp("eval_run") / "run")


def eval_files(workdir: str) -> list[str]:
    return sorted(n for n in os.listdir(workdir) if n.startswith("eval_"))


def test_every_evaluation_is_kept_with_its_settings(run_copy, tmp_path_factory):
    workdir = run_copy
    kw = dict(split="validation", limit=4, loss_batches=1)
    base = f"eval_validation_step{TRAINED_STEPS}_limit4_lossbatches1"
    # Evaluating while a training run holds the workdir: allowed, and the lock is untouched.
    with compilation_cache(tmp_path_factory), WorkdirLock(workdir) as lock:
        a = evaluate_checkpoint(workdir, **kw)
        b = evaluate_checkpoint(workdir, **kw, overrides=["decode.beam_size=1"])
        a_text = open(a["path"]).read()
        c = evaluate_checkpoint(workdir, **kw)
        assert read_json(os.path.join(workdir, ".lock"))["token"] == lock.info["token"]
    assert a["path"] == os.path.join(workdir, f"{base}.json")
    assert b["path"] == os.path.join(workdir, f"{base}_decode.beam_size=1.json")
    assert c["path"] == os.path.join(workdir, f"{base}_2.json")  # the first one is kept
    assert open(a["path"]).read() == a_text
    assert eval_files(workdir) == sorted(os.path.basename(x["path"]) for x in (a, b, c))
    sa, sb = read_json(a["path"])["settings"], read_json(b["path"])["settings"]
    assert (sa["limit"], sa["loss_batches"], sa["split"]) == (4, 1, "validation")
    assert sa["step"] == TRAINED_STEPS and sa["averaged"] is False
    assert sa["decode"]["beam_size"] == 2 and sa["overrides"] == {}
    assert sb["decode"]["beam_size"] == 1 and sb["overrides"] == {"decode.beam_size": 1}
    assert sa["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1, "sequence": 1}
    assert read_json(a["path"])["validation/bleu"] == a["validation/bleu"]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.d_model=64", "config key 'model.d_model' cannot change for an existing run"),
        ("tokenizer.vocab_size=300", "'tokenizer.vocab_size' cannot change"),
        ("train.num_steps=5", "'train.num_steps' cannot change"),
        ("data.max_length=64", "'data.max_length' cannot change"),
        ("decode.bleu_examples=3", "'decode.bleu_examples' does not apply to eval: use --limit"),
        ("model.d_modle=64", "unknown config key 'model.d_modle'"),
    ],
)
def test_eval_rejects_overrides_that_cannot_apply(override, needle, run_copy, capsys):
    before = eval_files(run_copy)
    assert main(["eval", "--workdir", run_copy, f"--config.{override}"]) == 2
    assert needle in one_error_line(capsys.readouterr().err, "eval")
    assert eval_files(run_copy) == before


def test_eval_config_accepts_what_applies_to_an_existing_model(data_dir):
    overrides = [
        "decode.beam_size=1",
        "decode.alpha=1.0",
        "mesh.data=4",
        "data.eval_tokens_per_batch=1024",
        "model.dtype=bfloat16",
        "model.d_model=32",  # the run's own value: changes nothing
    ]
    cfg, applied = eval_config(tiny_config(data_dir), overrides)
    assert applied == {
        "decode.beam_size": 1,
        "decode.alpha": 1.0,
        "mesh.data": 4,
        "data.eval_tokens_per_batch": 1024,
        "model.dtype": "bfloat16",
    }
    assert cfg.decode.beam_size == 1 and cfg.model.d_model == 32
    with pytest.raises(ConfigError, match="'model.num_heads' cannot change"):
        eval_config(tiny_config(data_dir), ["model.num_heads=4"])


def test_eval_model_overrides_change_how_the_model_computes(run_copy):
    setup = InferenceSetup(
        run_copy,
        step=None,
        averaged=False,
        overrides=["model.dtype=bfloat16", "model.attention_impl=xla"],
    )
    assert setup.model_config.dtype == jnp.bfloat16
    assert setup.model_config.attention_impl == "xla"
    assert setup.model_config.d_model == 32  # the architecture stays the checkpoint's


def test_eval_rejects_a_negative_limit(run_copy, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--workdir", run_copy, "--limit", "-1"])
    assert e.value.code == 2
    assert "--limit must be >= 0" in capsys.readouterr().err
