"""Training on two processes (hosts) on localhost, resuming, and moving to another mesh.

Each host reads its own shard of the training data (`shard_index = process
index`), so a two-host run sees different global batches than a one-host run
of the same config. The comparisons are therefore chosen so that equality is
expected exactly:

* two hosts, interrupted after step 2 and resumed on two hosts, against two
  hosts uninterrupted: the same batches and updates, so the same losses;
* the two-host checkpoint restored into one process with 8 devices and an FSDP
  mesh: the parameters are the saved ones bit for bit, the loss over the whole
  validation split (independent of how it is sharded over hosts) equals what the
  two-host run logged, and training goes on from there. One process reads the
  data in another order than two hosts do, so its continuation matches no
  uninterrupted run; only that it trains (finite losses, a new checkpoint) and
  says so in its log is checked;
* the BLEU the two hosts computed at the end of training (with the evaluation
  settings of a real run: beam 4, several full decode batches split over the
  devices of both hosts, a partial one last) against `tjax eval` of the same
  checkpoint in one process: the same translations, so the same BLEU. (After 4
  steps the model translates everything to ""; tests/test_distributed.py compares
  translations that differ from input to input.)
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import read_metrics, run_hosts, tiny_config, train, train_losses

from transformer_jax.train.evaluation import evaluate_checkpoint
from transformer_jax.train.restore import load_for_inference
from transformer_jax.train.trainer import Setup, evaluate_loss

TESTS = Path(__file__).resolve().parent
STEPS = 4

WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from helpers import tiny_config
    from transformer_jax.train.trainer import train_and_evaluate

    result = train_and_evaluate(tiny_config({data_dir!r}, **{overrides!r}), {workdir!r})
    import jax
    print("RESULT " + json.dumps({{
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "validation/loss": result.get("validation/loss"),
        "validation/bleu": result.get("validation/bleu"),
        "hypotheses": [ex["hypothesis"] for ex in result.get("examples", [])],
    }}))
    """
)

# BLEU as a real run computes it: beam 4, decode batches of 16 rows (4 per device),
# 2 full ones and a last one of 5 examples padded to 8 rows.
BLEU_EXAMPLES = 37
# Whole validation split for the eval loss; progress lines on.
OVERRIDES = dict(
    train__num_steps=STEPS,
    train__checkpoint_every=2,
    train__eval_every=1000,
    train__eval_batches=0,
    train__progress=True,
    decode__bleu_examples=BLEU_EXAMPLES,
    decode__beam_size=4,
    decode__batch_size=16,
)


def run_two_hosts(data_dir: str, workdir: str) -> list[tuple[int, str, str]]:
    """`train_and_evaluate` in two processes with 2 CPU devices each (4 global devices).

    No persistent compilation cache: its keys differ between the processes, so only
    process 0 would read programs back while process 1 compiles them afresh; with
    jax 0.10 gloo then failed to connect the resumed run's first collective.
    """
    code = WORKER.format(tests=str(TESTS), data_dir=data_dir, overrides=OVERRIDES, workdir=workdir)
    outs = run_hosts(code, 2, timeout=600)
    for i, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"process {i} failed (rc={rc}):\n{out[-2000:]}\n{err[-4000:]}"
    return outs


def result_of(out: str) -> dict:
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def saved_params(workdir: str, step: int) -> dict[str, np.ndarray]:
    """Flat `path -> array` of one step's params, read as `tjax translate` / `eval` do."""
    params = load_for_inference(workdir, step=step).params
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


@pytest.fixture(scope="module")
def two_host_runs(data_dir, tmp_path_factory):
    """Run A: two hosts, steps 1-4. Run B: A's step-2 checkpoint resumed on two hosts."""
    base = tmp_path_factory.mktemp("multihost")
    run_a, run_b = str(base / "uninterrupted"), str(base / "resumed")
    outs_a = run_two_hosts(data_dir, run_a)
    shutil.copytree(
        os.path.join(run_a, "checkpoints", "2"), os.path.join(run_b, "checkpoints", "2")
    )
    outs_b = run_two_hosts(data_dir, run_b)
    return {"a": run_a, "b": run_b, "outs_a": outs_a, "outs_b": outs_b}


def test_two_hosts_train_and_only_host_0_reports(two_host_runs):
    for outs in (two_host_runs["outs_a"], two_host_runs["outs_b"]):
        results = [result_of(out) for _, out, _ in outs]
        assert [r["process"] for r in results] == [0, 1]
        assert all(r["processes"] == 2 and r["devices"] == 4 for r in results)
        # The final eval is one global computation: both hosts get the same numbers.
        assert results[0]["validation/loss"] == results[1]["validation/loss"]
        assert results[0]["validation/bleu"] == results[1]["validation/bleu"]
        assert results[0]["hypotheses"] == results[1]["hypotheses"]
        _, out0, err0 = outs[0]
        _, out1, err1 = outs[1]
        assert f"step {STEPS}/{STEPS}" in err0
        assert "(2 host(s))" in out0 and "eval at step" in out0
        for text in (out1, err1):
            assert f"/{STEPS} " not in text and "steps/s" not in text, text[-2000:]
            assert "eval at step" not in text and "model:" not in text
    rows_a = read_metrics(two_host_runs["a"])
    train_steps = [r["step"] for r in rows_a if "train/loss" in r]
    assert train_steps == list(range(1, STEPS + 1))  # each step once, not once per host
    assert [r["step"] for r in rows_a if "validation/loss" in r] == [STEPS]
    rows_b = read_metrics(two_host_runs["b"])
    assert [r["step"] for r in rows_b if "train/loss" in r] == [3, 4]
    assert sorted(os.listdir(os.path.join(two_host_runs["a"], "checkpoints"))) == ["2", "4"]


def test_two_host_resume_continues_on_the_exact_next_batches(two_host_runs):
    """Each host must resume its own shard's position, not host 0's."""
    losses_a, losses_b = train_losses(two_host_runs["a"]), train_losses(two_host_runs["b"])
    for step in (3, 4):
        assert losses_b[step] == pytest.approx(losses_a[step], abs=1e-5), step
    assert len({round(v, 4) for v in losses_a.values()}) == STEPS
    params_a, params_b = saved_params(two_host_runs["a"], 4), saved_params(two_host_runs["b"], 4)
    assert params_a.keys() == params_b.keys()
    for key in params_a:
        np.testing.assert_allclose(params_b[key], params_a[key], rtol=0, atol=1e-6, err_msg=key)


def test_one_process_resumes_the_two_host_checkpoint_on_an_fsdp_mesh(
    two_host_runs, data_dir, tmp_path, tmp_path_factory, capsys
):
    workdir = str(tmp_path / "single")
    shutil.copytree(two_host_runs["a"], workdir)
    cfg = tiny_config(
        data_dir,
        mesh__data=1,
        mesh__fsdp=8,
        mesh__rules="fsdp",
        train__num_steps=STEPS + 2,
        train__eval_batches=0,
        decode__bleu_examples=2,
    )
    setup = Setup(cfg, workdir, for_training=True)
    assert setup.step == STEPS and jax.process_count() == 1 and len(jax.devices()) == 8
    state = setup.initial_state()
    # (a) the saved parameters, exactly, now split along "embed" over 8 devices
    saved = saved_params(two_host_runs["a"], STEPS)
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    assert {jax.tree_util.keystr(p) for p, _ in flat} == saved.keys()
    for path, value in flat:
        np.testing.assert_array_equal(np.asarray(value), saved[jax.tree_util.keystr(path)])
    kernel = state.params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]
    assert tuple(kernel.sharding.spec) == ("fsdp", None)
    assert {s.data.shape for s in kernel.addressable_shards} == {(32 // 8, 64)}
    # (b) the loss over the whole validation split is what the two-host run logged
    logged = next(
        r["validation/loss"]
        for r in read_metrics(two_host_runs["a"])
        if r["step"] == STEPS and "validation/loss" in r
    )
    here = evaluate_loss(setup, state.params, "validation", 0)["loss"]
    assert here == pytest.approx(logged, rel=1e-5, abs=0)
    setup.ckpt.close()
    # (c) training goes on from step 4 on the new mesh
    capsys.readouterr()
    train(cfg, workdir, tmp_path_factory)
    out = capsys.readouterr().out
    assert "resuming from step 4" in out
    # One shard per host: a new host count cannot continue the same batch sequence.
    assert "data position was saved by 2 process(es), this run has 1" in out
    losses = train_losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 3))
    assert all(np.isfinite(losses[s]) for s in (STEPS + 1, STEPS + 2))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    params_6 = saved_params(workdir, STEPS + 2)
    assert any(not np.array_equal(params_6[k], saved[k]) for k in saved)


def test_two_host_bleu_is_what_one_process_computes(two_host_runs, tmp_path):
    """`tjax eval` of the two-host checkpoint in one process: the BLEU the hosts logged."""
    workdir = str(tmp_path / "copy")
    shutil.copytree(two_host_runs["a"], workdir)
    logged = next(
        r["validation/bleu"]
        for r in read_metrics(two_host_runs["a"])
        if r["step"] == STEPS and "validation/bleu" in r
    )
    hosts = result_of(two_host_runs["outs_a"][0][1])
    assert hosts["validation/bleu"] == logged
    assert jax.process_count() == 1 and jax.device_count() == 8
    alone = evaluate_checkpoint(
        workdir, split="validation", step=STEPS, limit=BLEU_EXAMPLES, loss_batches=1
    )
    assert alone["validation/bleu"] == logged
    assert [ex["hypothesis"] for ex in alone["examples"]] == hosts["hypotheses"]
