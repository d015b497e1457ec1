"""Fault drills: signals, SIGKILL mid-run and mid-save, damaged checkpoints, NaNs, pickles.

The signal drills run the installed `tjax` in child processes (sharing this
session's persistent compilation cache); the rest call the library in-process.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import (
    TINY_CONFIG,
    TRAINED_STEPS,
    compilation_cache,
    read_metrics,
    subprocess_env,
    summary_line,
    tiny_config,
    tiny_overrides,
    tjax_executable,
    train_losses,
)

from transformer_jax.__main__ import main
from transformer_jax.data.processors import processors_from_json as tokenizers_from_json
from transformer_jax.data.tokenizer import SentencePieceTokenizer
from transformer_jax.train.checkpoint import ITEMS, Checkpointer, CheckpointError, checkpoint_dir
from transformer_jax.train.restore import load_for_inference
from transformer_jax.train.trainer import Setup, TrainingError, train_and_evaluate

TMP_SUFFIX = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return subprocess_env(tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def _jit_cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory):
        yield


# -- helpers --------------------------------------------------------------------------------


def train_argv(data_dir: str, workdir, **extra) -> list[str]:
    overrides = [f"--config.{o}" for o in tiny_overrides(data_dir, **extra)]
    return [tjax_executable(), "train", "--config", TINY_CONFIG, "--workdir", str(workdir)] + (
        overrides
    )


class Child:
    """One `tjax` child process with its output in files (no pipe to fill up)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_prefix: str):
        self.out_path, self.err_path = log_prefix + ".out", log_prefix + ".err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def out(self) -> str:
        return open(self.out_path).read()

    @property
    def err(self) -> str:
        return open(self.err_path).read()

    def kill_if_running(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def complete_metric_lines(workdir) -> list[dict]:
    """Rows of metrics.jsonl that are completely written (a child may be mid-line)."""
    try:
        text = open(os.path.join(workdir, "metrics.jsonl")).read()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.split("\n")[:-1]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def train_steps_logged(workdir, skip: int = 0) -> list[int]:
    return [r["step"] for r in complete_metric_lines(workdir)[skip:] if "train/loss" in r]


def wait_until(predicate, child: Child, timeout: float = 180, poll: float = 0.01) -> bool:
    """Polls until predicate() holds; False if the child exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if child.proc.poll() is not None:
            return predicate()
        time.sleep(poll)
    raise TimeoutError("the child made no progress in time")


def step_dirs(workdir) -> tuple[list[str], list[str]]:
    """(finalized entries, unfinished `*.orbax-checkpoint-tmp*` entries) of the checkpoint dir."""
    d = checkpoint_dir(str(workdir))
    entries = sorted(os.listdir(d)) if os.path.isdir(d) else []
    tmp = [e for e in entries if TMP_SUFFIX in e]
    done = sorted((e for e in entries if e not in tmp), key=lambda e: (len(e), e))
    return done, tmp


def restorable_steps(workdir) -> list[int]:
    """The steps a restarted run may restore, as a fresh Orbax manager lists them."""
    d = checkpoint_dir(str(workdir))
    if not os.path.isdir(d):
        return []
    ckpt = Checkpointer(d, read_only=True)
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def saved_state(workdir, step: int, averaged: bool = False):
    sub = "checkpoints_averaged" if averaged else "checkpoints"
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(str(workdir), sub, str(step), "state"))


def flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tjax {command}: error: "), err
    return lines[0]


def copy_workdir(src: str, dst) -> str:
    """A copy of a trained workdir with only its training checkpoints and run files."""
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("checkpoints_averaged", "eval_*.json", "*.tmp")
    )
    return str(dst)


def truncate_state_data(step_dir: str) -> str:
    """Cuts the largest array data file of a step's `state` item in half."""
    data = os.path.join(step_dir, "state", "d")
    biggest = max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.truncate(size // 2)
    return biggest


def pickle_payload(marker: str) -> bytes:
    """A pickle that, if ever unpickled, creates `marker` (builtins only: it runs anywhere)."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({marker!r}, 'w').close()",))

    return pickle.dumps(Payload())


# -- 1. SIGTERM: finish the step, save, exit 75, resume ------------------------------------


def test_sigterm_saves_the_current_step_and_the_rerun_resumes(data_dir, env, tmp_path, request):
    workdir = tmp_path / "run"
    # Rare checkpoints: the only one before the signal is the one the signal causes.
    argv = train_argv(
        data_dir, workdir, train__num_steps=50, train__checkpoint_every=1000, train__eval_every=1000
    )
    first = Child(argv, env, str(tmp_path / "first"))
    try:
        assert wait_until(lambda: len(train_steps_logged(workdir)) >= 3, first), first.err
        first.proc.send_signal(signal.SIGTERM)
        rc = first.wait()
    finally:
        first.kill_if_running()
    assert rc == 75, first.err
    lines = [line for line in first.err.splitlines() if line.startswith("tjax train:")]
    assert len(lines) == 1, first.err
    n = int(re.search(r"stopped at step (\d+) \(checkpoint saved", lines[0]).group(1))
    assert "run the same command again to resume" in lines[0]
    assert 3 <= n < 50
    # The checkpoint holds exactly the last completed step: nothing was lost or half-done.
    assert restorable_steps(workdir) == [n]
    assert step_dirs(workdir) == ([str(n)], [])
    assert max(train_steps_logged(workdir)) == n
    assert int(saved_state(workdir, n)["step"]) == n
    assert f"stopped by signal {int(signal.SIGTERM)} at step {n}" in first.out

    second = Child(argv, env, str(tmp_path / "second"))
    try:
        rc = second.wait()
    finally:
        second.kill_if_running()
    assert rc == 0, second.err
    assert f"resuming from step {n}" in second.out
    assert restorable_steps(workdir) == [n, 50]
    assert sorted(train_losses(str(workdir))) == list(range(1, 51))
    summary_line(
        request.config, f"SIGTERM drill: stopped at step {n}, exit 75, resumed from {n}, finished"
    )


# -- 2. SIGKILL at random moments: the resumed run is bit-identical -------------------------

KILL_STEPS, KILL_EVERY = 30, 3


def _check_after_kill(workdir) -> tuple[list[int], list[str]]:
    """Only complete steps are listed for restore; unfinished saves are left aside."""
    finalized, tmp = step_dirs(workdir)
    steps = restorable_steps(workdir)
    assert [str(s) for s in steps] == finalized, (steps, finalized, tmp)
    d = checkpoint_dir(str(workdir))
    for s in steps:
        names = set(os.listdir(os.path.join(d, str(s))))
        assert {"_CHECKPOINT_METADATA", *ITEMS} <= names, (s, names)
        assert not any(TMP_SUFFIX in n for n in names), (s, names)
    for entry in tmp:
        assert int(entry.split(".")[0]) not in steps, (entry, steps)
    if steps:  # the step a rerun would restore reads back completely
        state = saved_state(workdir, steps[-1])
        assert int(state["step"]) == steps[-1]
    return steps, tmp


def test_sigkill_at_random_moments_resumes_bit_identically(data_dir, env, tmp_path, request):
    rng = random.Random(20240607)
    extra = dict(
        train__num_steps=KILL_STEPS,
        train__checkpoint_every=KILL_EVERY,
        train__keep_checkpoints=20,
        model__dropout_rate=0.1,
        seed=7,
    )
    reference = tmp_path / "reference"
    ref = Child(train_argv(data_dir, reference, **extra), env, str(tmp_path / "reference"))
    assert ref.wait() == 0, ref.err

    victim = tmp_path / "victim"
    argv = train_argv(data_dir, victim, **extra)
    # What each kill waits for: an async checkpoint write in flight, a newly committed
    # checkpoint (plus a random delay), or a random time after the start (possibly during
    # startup). Saves take longer than these tiny steps, so most moments fall inside one.
    plan = ["save_in_flight", "after_commit", "after_time", "after_commit"]
    kills = resumes = kills_mid_save = launches = 0
    resumed_from = []
    ckpt_dir = checkpoint_dir(str(victim))
    while True:
        start = (restorable_steps(victim) or [0])[-1]
        child = Child(argv, env, str(tmp_path / f"victim{launches}"))
        launches += 1
        kind = plan[kills] if kills < len(plan) else None
        try:
            if kind == "save_in_flight":

                def saving():
                    entries = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
                    return any(TMP_SUFFIX in e for e in entries)

                wait_until(saving, child, poll=0.0005)
            elif kind == "after_commit":
                # A later checkpoint committed (so the rerun resumes), then a moment more.
                target = min(start + KILL_EVERY * rng.randint(1, 3), KILL_STEPS - KILL_EVERY)

                def committed(target=target):
                    return str(target) in step_dirs(victim)[0]

                wait_until(committed, child, poll=0.002)
                time.sleep(rng.uniform(0.0, 0.3))
            elif kind == "after_time":
                time.sleep(rng.uniform(1.0, 7.0))
            if kind is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGKILL)
            rc = child.wait()
        finally:
            child.kill_if_running()
        resumed = re.findall(r"resuming from step (\d+)", child.out)
        assert resumed in ([], [str(start)]), (start, child.out)
        if start and rc == 0:
            assert resumed, child.out
        resumes += bool(resumed)
        resumed_from += [int(r) for r in resumed]
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, child.err
        kills += 1
        steps, tmp = _check_after_kill(victim)
        if kind == "save_in_flight" and not tmp:
            plan.insert(kills, "save_in_flight")  # the save finished first: try again
            assert kills < 8, "never caught a checkpoint write in flight"
        kills_mid_save += bool(tmp)
    assert "damaged" not in child.out
    assert kills >= 3 and kills_mid_save >= 1 and resumes >= 1
    assert step_dirs(victim)[1] == []  # leftovers of killed saves were cleaned up
    assert restorable_steps(victim) == restorable_steps(reference)
    assert restorable_steps(victim) == list(range(KILL_EVERY, KILL_STEPS + 1, KILL_EVERY))

    want, got = flat(saved_state(reference, KILL_STEPS)), flat(saved_state(victim, KILL_STEPS))
    assert want.keys() == got.keys()
    assert any("params" in k for k in want)
    for key in want:
        assert np.array_equal(want[key], got[key]), key
    assert train_losses(str(victim)) == train_losses(str(reference))
    summary_line(
        request.config,
        f"SIGKILL drill: {kills} kills ({kills_mid_save} during an async checkpoint write), "
        f"{resumes} resumes (from steps {resumed_from}), {launches} launches; final state bit-identical to the "
        f"uninterrupted run ({len(want)} arrays)",
    )


# -- 3. damaged checkpoints: fall back to the previous step ---------------------------------


def test_truncated_state_falls_back_to_the_previous_step(
    trained, data_dir, tmp_path, capsys, request
):
    workdir = copy_workdir(trained, tmp_path / "copy")
    latest, previous = TRAINED_STEPS, TRAINED_STEPS - 4
    assert restorable_steps(workdir)[-2:] == [previous, latest]
    truncate_state_data(os.path.join(workdir, "checkpoints", str(latest)))
    before = train_losses(workdir)

    # Asking for the damaged step by number is a one-line error naming it.
    args = ["--split", "validation", "--limit", "2", "--loss-batches", "1"]
    assert main(["eval", "--workdir", workdir, "--step", str(latest), *args]) == 2
    line = one_error_line(capsys.readouterr().err, "eval")
    assert f"checkpoint step {latest} in " in line and "is damaged" in line
    # Without --step, the newest readable step is used.
    assert main(["eval", "--workdir", workdir, *args]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["step"] == previous
    assert f"checkpoint step {latest} is damaged" in captured.err
    assert f"using step {previous}" in captured.err
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(latest)))  # eval moves nothing

    # Training sets the damaged step aside, resumes from the previous one and continues.
    cfg = tiny_config(
        data_dir,
        train__num_steps=latest + 4,
        train__checkpoint_every=4,
        train__keep_checkpoints=3,
    )
    train_and_evaluate(cfg, workdir)
    out = capsys.readouterr().out
    assert f"checkpoint step {latest} is damaged" in out
    assert f"falling back to step {previous}" in out
    assert f"resuming from step {previous}" in out
    damaged = os.listdir(os.path.join(workdir, "damaged_checkpoints"))
    assert len(damaged) == 1 and damaged[0].startswith(f"{latest}-")
    assert restorable_steps(workdir) == [previous, latest, latest + 4]
    after = train_losses(workdir)
    assert sorted(after) == list(range(1, latest + 5))
    # The redone steps are the same batches and updates as the first time.
    for step in range(previous + 1, latest + 1):
        assert after[step] == before[step], step
    summary_line(
        request.config,
        f"damaged checkpoint drill: truncated state of step {latest} -> fell back to step "
        f"{previous} (eval, train), quarantined, trained on to {latest + 4}",
    )


@pytest.mark.parametrize("item", ["config", "model", "tokenizer", "data"])
def test_damaged_json_item_falls_back(item, trained, data_dir, tmp_path, capsys, request):
    workdir = copy_workdir(trained, tmp_path / "copy")
    latest, previous = TRAINED_STEPS, TRAINED_STEPS - 4
    path = os.path.join(workdir, "checkpoints", str(latest), item, "metadata")
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])

    with pytest.raises(CheckpointError) as e:
        load_for_inference(workdir, step=latest)
    assert f"checkpoint step {latest} in " in str(e.value) and "is damaged" in str(e.value)
    assert "\n" not in str(e.value)
    assert load_for_inference(workdir).step == previous
    assert f"checkpoint step {latest} is damaged" in capsys.readouterr().err

    cfg = tiny_config(data_dir, train__num_steps=TRAINED_STEPS + 4, train__checkpoint_every=4)
    setup = Setup(cfg, workdir, for_training=True)
    try:
        assert setup.step == previous and setup.damaged == [latest]
        assert int(setup.initial_state().step) == previous
    finally:
        setup.ckpt.close()
    assert restorable_steps(workdir)[-1] == previous
    assert os.listdir(os.path.join(workdir, "damaged_checkpoints"))[0].startswith(f"{latest}-")
    summary_line(
        request.config,
        f"damaged checkpoint drill: truncated {item} item of step {latest} -> fell back to "
        f"step {previous} (inference and training), quarantined",
    )


# -- 4. numerical faults --------------------------------------------------------------------


def _all_finite(workdir, step: int) -> bool:
    return all(
        np.all(np.isfinite(v))
        for v in flat(saved_state(workdir, step)).values()
        if v.dtype.kind == "f"
    )


def test_nonfinite_step_stops_with_the_last_good_checkpoint(data_dir, tmp_path, capsys):
    # Step 5 (batch index 4) gets a NaN gradient; metrics are read every 4 steps, so the
    # fault is found when the step-6 checkpoint is about to be written.
    cfg = tiny_config(
        data_dir,
        train__num_steps=8,
        train__checkpoint_every=2,
        train__log_every=4,
        train__inject_nonfinite_step=4,
        train__on_nonfinite="stop",
    )
    with pytest.raises(TrainingError) as e:
        train_and_evaluate(cfg, str(tmp_path))
    msg = str(e.value)
    assert "non-finite loss, gradient or update at step 5 (batch index 4)" in msg
    assert "last good checkpoint: step 4" in msg and "on_nonfinite=skip" in msg
    assert "\n" not in msg
    # Nothing at or after the fault was saved, and what was saved is finite.
    assert restorable_steps(tmp_path) == [2, 4]
    for step in (2, 4):
        assert _all_finite(tmp_path, step), step


def test_nonfinite_step_is_skipped_without_applying_its_update(data_dir, tmp_path, capsys, request):
    cfg = tiny_config(
        data_dir,
        train__num_steps=6,
        train__checkpoint_every=1,
        train__inject_nonfinite_step=3,
        train__on_nonfinite="skip",
    )
    result = train_and_evaluate(cfg, str(tmp_path))
    assert result["skipped_steps"] == 1
    rows = [r for r in read_metrics(str(tmp_path)) if "train/skipped_steps" in r]
    assert rows[-1]["step"] == 6 and rows[-1]["train/skipped_steps"] == 1
    assert [r["train/skipped_steps"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert (
        "skipped 1 step(s) with a non-finite loss, gradient or update: [4]"
        in capsys.readouterr().out
    )
    assert restorable_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    before, skipped, after = (flat(saved_state(tmp_path, s)) for s in (3, 4, 5))
    for key in before:
        if key == "['step']":
            continue
        # Step 4 applied nothing (params and optimizer moments as after step 3) ...
        assert np.array_equal(before[key], skipped[key]), key
    # ... and training went on: step 5 changed the parameters again.
    assert any(not np.array_equal(skipped[k], after[k]) for k in skipped if "params" in k)
    for step in range(1, 7):
        assert _all_finite(tmp_path, step), step
    summary_line(
        request.config,
        "non-finite drill: NaN gradient at step 5 -> stop (last good checkpoint 4, no NaN "
        "saved); at step 4 with skip -> skipped_steps=1, update not applied, params finite",
    )


# -- 6. pickles are never loaded ------------------------------------------------------------


def test_pickle_payloads_are_never_unpickled(trained, tmp_path, capsys, request):
    marker = str(tmp_path / "PWNED")
    payload = pickle_payload(marker)
    control = str(tmp_path / "control")
    pickle.loads(pickle_payload(control))  # the payload is live: loading it runs code
    assert os.path.exists(control)

    # (a) A Marian folder whose only weights are a pickle.
    marian = tmp_path / "marian"
    marian.mkdir()
    (marian / "config.json").write_text(json.dumps({"model_type": "marian"}))
    (marian / "pytorch_model.bin").write_bytes(payload)
    dst = tmp_path / "imported"
    assert main(["import-hf", "--from", str(marian), "--to", str(dst)]) == 2
    line = one_error_line(capsys.readouterr().err, "import-hf")
    assert "pytorch_model.bin" in line and "pickle files are not loaded" in line
    assert not dst.exists()

    # (b) A checkpoint's JSON item replaced by a pickle: that step is refused.
    workdir = copy_workdir(trained, tmp_path / "copy")
    step_dir = os.path.join(workdir, "checkpoints", str(TRAINED_STEPS))
    with open(os.path.join(step_dir, "tokenizer", "metadata"), "wb") as f:
        f.write(payload)
    argv = ["translate", "--workdir", workdir, "--step", str(TRAINED_STEPS), "The cat sleeps."]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "translate")
    assert f"checkpoint step {TRAINED_STEPS} in " in line and "is damaged" in line
    # Every file of the step replaced by the pickle: still refused, never unpickled.
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(payload)
    with pytest.raises(CheckpointError, match=f"checkpoint step {TRAINED_STEPS} .*damaged"):
        load_for_inference(workdir, step=TRAINED_STEPS)
    assert load_for_inference(workdir).step == TRAINED_STEPS - 4
    assert f"checkpoint step {TRAINED_STEPS} is damaged" in capsys.readouterr().err

    # (c) A tokenizer model file (or a stored tokenizer) that is a pickle.
    tok_path = tmp_path / "spm.model"
    tok_path.write_bytes(payload)
    with pytest.raises(ValueError, match="Invalid SentencePiece model"):
        SentencePieceTokenizer.load(tok_path)
    import base64

    blob = {"kind": "sentencepiece", "model": base64.b64encode(payload).decode()}
    with pytest.raises(ValueError):
        tokenizers_from_json(blob)
    run = tmp_path / "run"
    argv = ["train", "--config", TINY_CONFIG, "--workdir", str(run)]
    argv += [f"--config.{o}" for o in tiny_overrides("unused")]
    assert main([*argv, f"--config.tokenizer.path={tok_path}"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "Invalid SentencePiece model" in line

    assert not os.path.exists(marker)
    summary_line(
        request.config,
        "pickle drill: 6 pickle payloads (Marian weights, checkpoint JSON item, whole "
        "checkpoint step, tokenizer file, stored tokenizer, tokenizer.path) refused; none ran",
    )


def _blow_up_updates_from(monkeypatch, count: int) -> None:
    """Makes the optimizer's update number `count` (from 0) infinite, as lr_scale=inf would.

    The extra transformation counts its own updates; once a step is refused its
    optimizer state (and so this counter) is kept, so every later update is infinite too.
    """
    import jax.numpy as jnp
    import optax

    from transformer_jax.train import trainer

    real = trainer.make_optimizer

    def make(opt, *args):
        boost = optax.scale_by_schedule(lambda c: jnp.where(c == count, jnp.inf, 1.0))
        return optax.chain(real(opt, *args), boost)

    monkeypatch.setattr(trainer, "make_optimizer", make)


def test_nonfinite_update_stops_before_a_nonfinite_state_is_saved(data_dir, tmp_path, monkeypatch):
    # Finite loss and gradient at step 4 (batch index 3), but an infinite update.
    _blow_up_updates_from(monkeypatch, 3)
    cfg = tiny_config(
        data_dir,
        train__num_steps=8,
        train__checkpoint_every=2,
        train__log_every=4,
        train__on_nonfinite="stop",
    )
    with pytest.raises(TrainingError) as e:
        train_and_evaluate(cfg, str(tmp_path))
    msg = str(e.value)
    assert "at step 4 (batch index 3)" in msg and "\n" not in msg
    named = int(re.search(r"last good checkpoint: step (\d+)", msg).group(1))
    assert named == 2 and _all_finite(tmp_path, named)
    assert restorable_steps(tmp_path) == [2]


def test_nonfinite_updates_are_skipped_and_never_saved(data_dir, tmp_path, monkeypatch, capsys):
    _blow_up_updates_from(monkeypatch, 3)
    cfg = tiny_config(
        data_dir, train__num_steps=6, train__checkpoint_every=1, train__on_nonfinite="skip"
    )
    result = train_and_evaluate(cfg, str(tmp_path))
    assert result["skipped_steps"] == 3
    assert "skipped 1 step(s) with a non-finite" in capsys.readouterr().out
    assert restorable_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert _all_finite(tmp_path, step), step
    before, last = flat(saved_state(tmp_path, 3)), flat(saved_state(tmp_path, 6))
    for key in before:
        if key != "['step']":  # steps 4-6 applied nothing
            assert np.array_equal(before[key], last[key]), key


def test_skipped_step_count_survives_a_resume(data_dir, tmp_path):
    first = tiny_config(
        data_dir,
        train__num_steps=4,
        train__checkpoint_every=2,
        train__inject_nonfinite_step=1,
        train__on_nonfinite="skip",
    )
    assert train_and_evaluate(first, str(tmp_path))["skipped_steps"] == 1
    ckpt = Checkpointer(checkpoint_dir(str(tmp_path)), read_only=True)
    try:
        assert ckpt.restore_meta(4)["data"]["skipped_steps"] == 1
    finally:
        ckpt.close()
    again = tiny_config(
        data_dir,
        train__num_steps=6,
        train__checkpoint_every=2,
        train__inject_nonfinite_step=4,
        train__on_nonfinite="skip",
    )
    assert train_and_evaluate(again, str(tmp_path))["skipped_steps"] == 2
    rows = [r for r in read_metrics(str(tmp_path)) if "train/skipped_steps" in r]
    assert [(r["step"], r["train/skipped_steps"]) for r in rows] == [
        (1, 0),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 2),
        (6, 2),
    ]


def test_a_nonfinite_checkpoint_is_never_resumed_or_saved_again(data_dir, tmp_path):
    cfg = tiny_config(data_dir, train__num_steps=2, train__checkpoint_every=2)
    train_and_evaluate(cfg, str(tmp_path))
    # Put a NaN into the saved parameters of step 2 (as a run without the guard could).
    ckpt = Checkpointer(checkpoint_dir(str(tmp_path)))
    try:
        meta = ckpt.restore_meta(2)
        state = ckpt.restore_state_on_host(2)
        leaves, treedef = jax.tree.flatten(state["params"])
        leaves[0] = np.array(leaves[0])
        leaves[0].flat[0] = np.nan
        state["params"] = jax.tree.unflatten(treedef, leaves)
        ckpt.manager.delete(2)
        ckpt.save(2, state=state, **meta, force=True)
    finally:
        ckpt.close()
    assert not _all_finite(tmp_path, 2)

    skip = tiny_config(
        data_dir, train__num_steps=4, train__checkpoint_every=2, train__on_nonfinite="skip"
    )
    with pytest.raises(TrainingError, match="checkpoint step 2 in .* non-finite") as e:
        train_and_evaluate(skip, str(tmp_path))
    assert "\n" not in str(e.value)
    assert restorable_steps(tmp_path) == [2]
