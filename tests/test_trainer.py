"""End-to-end trainer tests on the tiny grammar corpus: resume, determinism, checkpoints."""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import (
    TRAINED_STEPS,
    tiny_config,
    train,
    train_losses,
)

from transformer_jax.train.checkpoint import ITEMS, CheckpointError
from transformer_jax.train.losses import smoothed_cross_entropy
from transformer_jax.train.optim import make_schedule, rsqrt_schedule
from transformer_jax.train.restore import open_checkpoints
from transformer_jax.train.trainer import average_checkpoints, evaluate_checkpoint


def steps_of(workdir: str, averaged: bool = False) -> list[int]:
    sub = "checkpoints_averaged" if averaged else "checkpoints"
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, sub)) if d.isdigit())


def saved_params(workdir: str, step: int, averaged: bool = False) -> dict[str, np.ndarray]:
    """Flat `path -> float64 array` of one step's params, read directly with orbax."""
    sub = "checkpoints_averaged" if averaged else "checkpoints"
    path = os.path.join(workdir, sub, str(step), "state")
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(path)
    flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    return {jax.tree_util.keystr(p): np.asarray(v, np.float64) for p, v in flat}


def file_snapshot(directory: str) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            st = os.stat(path)
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return out


# -- resume and determinism -----------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    """Run A: 8 steps in one go, a checkpoint every 2 steps, loss logged every step."""
    workdir = str(tmp_path_factory.mktemp("run_a"))
    train(tiny_config(data_dir), workdir, tmp_path_factory)
    return workdir


@pytest.fixture(scope="module")
def four_steps(data_dir, tmp_path_factory):
    """Run B's first half: the same config stopped at step 4."""
    workdir = str(tmp_path_factory.mktemp("run_b"))
    train(tiny_config(data_dir, train__num_steps=4), workdir, tmp_path_factory)
    return workdir


def test_resume_continues_on_the_exact_next_batch(
    data_dir, uninterrupted, four_steps, tmp_path_factory
):
    losses_a = train_losses(uninterrupted)
    assert sorted(losses_a) == list(range(1, 9))
    workdir = four_steps
    assert steps_of(workdir) == [2, 4]
    first_half = train_losses(workdir)
    assert sorted(first_half) == [1, 2, 3, 4]

    train(tiny_config(data_dir, train__num_steps=8), workdir, tmp_path_factory)

    losses_b = train_losses(workdir)
    assert sorted(losses_b) == list(range(1, 9))
    for step in range(1, 9):
        assert losses_b[step] == pytest.approx(losses_a[step], abs=1e-6), step
    # Steps differ from each other, so equal losses are not a coincidence of a flat curve.
    assert len({round(losses_a[s], 6) for s in range(5, 9)}) == 4
    assert steps_of(workdir) == [2, 4, 6, 8]
    params_a, params_b = saved_params(uninterrupted, 8), saved_params(workdir, 8)
    assert params_a.keys() == params_b.keys()
    for key in params_a:
        np.testing.assert_allclose(params_b[key], params_a[key], rtol=0, atol=1e-6, err_msg=key)
    # The resumed half did update the parameters restored from step 4.
    params_4 = saved_params(workdir, 4)
    assert any(not np.array_equal(params_4[k], params_b[k]) for k in params_b)


def test_two_fresh_runs_are_identical(
    data_dir, four_steps, uninterrupted, tmp_path, tmp_path_factory
):
    train(tiny_config(data_dir, train__num_steps=4), str(tmp_path), tmp_path_factory)
    again = train_losses(str(tmp_path))
    # `four_steps` may already hold the resumed steps 5..8; compare the fresh part.
    reference = {s: v for s, v in train_losses(four_steps).items() if s <= 4}
    assert again == reference
    # The first four steps of the longer run A are the same batches and updates.
    assert again == {s: v for s, v in train_losses(uninterrupted).items() if s <= 4}
    p1, p2 = saved_params(str(tmp_path), 4), saved_params(four_steps, 4)
    for key in p1:
        np.testing.assert_array_equal(p1[key], p2[key], err_msg=key)


def test_loss_falls(trained):
    losses = train_losses(trained)
    assert sorted(losses) == list(range(1, TRAINED_STEPS + 1))
    first = losses[1]
    last = np.mean([losses[s] for s in range(TRAINED_STEPS - 3, TRAINED_STEPS + 1)])
    # Measured: ~5.0 at step 1 and ~3.2 over steps 21-24.
    assert first > 4.5
    assert last < first - 1.0, (first, last)


def test_logged_learning_rate_follows_the_schedule(trained):
    cfg = json.load(open(os.path.join(trained, "config.json")))
    d, warmup = cfg["model"]["d_model"], cfg["optimizer"]["warmup_steps"]
    scale = cfg["optimizer"]["lr_scale"]
    rows = [
        r
        for r in map(json.loads, open(os.path.join(trained, "metrics.jsonl")))
        if "train/learning_rate" in r
    ]
    assert len(rows) == TRAINED_STEPS
    for r in rows:
        step = r["step"]
        want = scale * d**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert r["train/learning_rate"] == pytest.approx(want, rel=1e-5), step


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_contents_and_workdir_files(uninterrupted, trained):
    assert steps_of(uninterrupted) == [2, 4, 6, 8]
    for step in steps_of(uninterrupted):
        step_dir = os.path.join(uninterrupted, "checkpoints", str(step))
        assert set(ITEMS) <= set(os.listdir(step_dir)), step
    ckpt = open_checkpoints(uninterrupted)
    meta = ckpt.restore_meta(8)
    ckpt.close()
    assert meta["config"]["model"]["d_model"] == 32
    assert meta["model"]["d_model"] == 32 and meta["model"]["num_heads"] == 2
    assert json.loads(meta["data"]["iterator"])  # a non-empty iterator state
    assert meta["tokenizer"]
    for workdir in (uninterrupted, trained):
        assert os.path.getsize(os.path.join(workdir, "metrics.jsonl")) > 0
        assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
        assert os.path.isfile(os.path.join(workdir, "config.json"))
    # keep_checkpoints=3 with a checkpoint every 4 steps of 24.
    assert steps_of(trained) == [16, 20, 24]


def test_average_checkpoints(trained):
    # Averaging again (another --last) replaces the earlier average of the same step.
    first = average_checkpoints(trained, last=3)
    assert first["steps"] == [16, 20, 24]
    out = average_checkpoints(trained, last=2)
    assert out["steps"] == [20, 24]
    assert out["directory"] == os.path.join(trained, "checkpoints_averaged")
    assert steps_of(trained, averaged=True) == [24]
    assert steps_of(trained) == [16, 20, 24]
    p20, p24 = saved_params(trained, 20), saved_params(trained, 24)
    avg = saved_params(trained, 24, averaged=True)
    assert avg.keys() == p24.keys()
    differ = 0
    for key in avg:
        want = (p20[key] + p24[key]) / 2
        np.testing.assert_allclose(avg[key], want, rtol=1e-6, atol=1e-7, err_msg=key)
        differ += not np.allclose(p20[key], p24[key])
    assert differ > 0
    with pytest.raises(CheckpointError, match="--last 4: only 3 checkpoints"):
        average_checkpoints(trained, last=4)


def test_evaluate_checkpoint_writes_json(trained):
    out = evaluate_checkpoint(trained, split="validation", limit=16, loss_batches=1)
    assert out["step"] == TRAINED_STEPS and out["split"] == "validation"
    path = os.path.join(trained, f"eval_validation_step{TRAINED_STEPS}_limit16_lossbatches1.json")
    assert out["path"] == path
    saved = json.load(open(path))
    assert np.isfinite(saved["validation/loss"]) and saved["validation/loss"] > 0
    assert 0.0 <= saved["validation/bleu"] <= 100.0
    assert saved["step"] == TRAINED_STEPS
    assert len(saved["examples"]) == 5


def test_different_model_size_is_refused(trained, data_dir, tmp_path, tmp_path_factory):
    workdir = str(tmp_path / "copy")
    shutil.copytree(trained, workdir)
    before_steps = steps_of(workdir)
    before = file_snapshot(workdir)
    cfg = tiny_config(data_dir, model__d_model=64, train__num_steps=TRAINED_STEPS + 4)
    with pytest.raises(CheckpointError, match="different model") as e:
        train(cfg, workdir, tmp_path_factory)
    assert "d_model: checkpoint 32 vs config 64" in str(e.value)
    assert "\n" not in str(e.value)
    assert steps_of(workdir) == before_steps
    assert file_snapshot(workdir) == before


# -- loss and schedule ---------------------------------------------------------------------


def smoothed_reference(logits, targets, weights, eps, allowed=None):
    """KL(q || softmax(logits)) with q = 1 - eps on the target and eps / (n-1) on each of
    the other n - 1 allowed tokens (all V tokens unless `allowed` says otherwise)."""
    V = logits.shape[-1]
    allowed = np.ones(V, bool) if allowed is None else np.asarray(allowed, bool)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    q = np.where(allowed, eps / (allowed.sum() - 1), 0.0) * np.ones(logits.shape)
    np.put_along_axis(q, targets[..., None], 1.0 - eps, axis=-1)
    cross_entropy = -(q * logp).sum(-1)
    entropy = -np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0).sum(-1)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return ((cross_entropy - entropy) * weights).sum(), (nll * weights).sum()


@pytest.mark.parametrize("eps", [0.1, 0.0])
def test_label_smoothing_matches_numpy(eps):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float64)
    loss, nll, w, correct = smoothed_cross_entropy(
        jnp.asarray(logits, jnp.float32),
        jnp.asarray(targets, jnp.int32),
        jnp.asarray(weights, jnp.float32),
        eps,
    )
    want_loss, want_nll = smoothed_reference(logits, targets, weights, eps)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(nll) == pytest.approx(want_nll, rel=1e-5)
    assert float(w) == weights.sum()
    assert float(correct) == ((logits.argmax(-1) == targets) * weights).sum()


@pytest.mark.parametrize("case", ["unique", "near_ties", "ties", "nan", "inf"])
def test_accuracy_is_numpy_argmax_with_ties_nan_and_inf(case):
    """`correct` counts argmax(logits) == target as NumPy does: the first of tied maxima
    and the first NaN win. Unique maxima (even one float step apart) take the fast path,
    the other cases the exact reduction; both must agree with NumPy."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, 50)).astype(np.float32)
    targets = rng.integers(0, 50, size=(4, 6))
    targets[:, :3] = logits[:, :3].argmax(-1)  # some hits
    top = logits[0, 0].argmax()
    below = np.nextafter(logits[0, 0, top], np.float32(-np.inf))
    if case == "near_ties":  # one float step below the maximum, before and after it
        logits[0, 0, [0, 49]] = below
        targets[0, 1] = 0
    elif case == "ties":  # the maximum held twice: only the first index counts
        logits[0, 0, 7] = logits[0, 0, 30] = logits[0, 0].max() + 1
        targets[0, 0], targets[0, 1] = 30, 7
        logits[0, 1, 7] = logits[0, 1, 30] = logits[0, 1].max() + 1
    elif case == "nan":
        logits[1, 2, 5] = logits[1, 2, 9] = np.nan
        targets[1, 2] = 5
        logits[1, 3, 9] = np.nan
        targets[1, 3] = logits[1, 3].argmax() if logits[1, 3].argmax() != 9 else 0
    elif case == "inf":
        logits[2, 0, [4, 8]] = np.inf  # tied infinities: the first wins
        targets[2, 0], targets[2, 2] = 8, 4
        logits[2, 2, 4] = np.inf
        logits[2, 1, :] = -np.inf
        targets[2, 1] = 0
    weights = np.ones(targets.shape, np.float32)
    *_, correct = smoothed_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets, jnp.int32), jnp.asarray(weights), 0.1
    )
    assert float(correct) == (logits.argmax(-1) == targets).sum()


def test_smoothed_loss_is_zero_for_the_smoothed_target():
    V, eps = 6, 0.1
    q = np.full((1, 1, V), eps / (V - 1))
    q[0, 0, 2] = 1 - eps
    loss, nll, _, _ = smoothed_cross_entropy(
        jnp.asarray(np.log(q), jnp.float32),
        jnp.asarray([[2]], jnp.int32),
        jnp.ones((1, 1), jnp.float32),
        eps,
    )
    assert abs(float(loss)) < 1e-5
    assert float(nll) == pytest.approx(-np.log(1 - eps), rel=1e-5)


def test_rsqrt_schedule_is_the_papers_formula():
    d, warmup = 512, 4000
    schedule = rsqrt_schedule(d, warmup)

    def paper(step):
        return d**-0.5 * min(step**-0.5, step * warmup**-1.5)

    for step in (1, 2, 100, 3999, 4000, 4001, 10_000, 100_000):
        # Optax counts updates from 0: update n is the paper's step n + 1.
        assert float(schedule(step - 1)) == pytest.approx(paper(step), rel=1e-5), step
    lrs = np.asarray(schedule(jnp.arange(12_000)))
    assert int(lrs.argmax()) + 1 == warmup
    assert lrs.max() == pytest.approx(d**-0.5 * warmup**-0.5, rel=1e-5)
    cfg = tiny_config("unused")
    scaled = make_schedule(cfg.optimizer, 32)
    warm = cfg.optimizer.warmup_steps
    assert float(scaled(9)) == pytest.approx(
        cfg.optimizer.lr_scale * 32**-0.5 * 10 * warm**-1.5, rel=1e-5
    )


@pytest.mark.parametrize("eps", [0.1, 0.0])
@pytest.mark.parametrize("with_allowed", [False, True])
def test_loss_gradient_matches_torch_autograd(eps, with_allowed):
    """The hand-written backward pass of the vocabulary loss against torch's autograd of
    the smoothed cross entropy written out in float64, with weights, a banned token, a
    gradient on the NLL sum as well, and a target tied for the maximum logit."""
    torch = pytest.importorskip("torch")
    V = 13
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(2, 7, V)) * 3).astype(np.float32)
    targets = rng.integers(0, V - 1, size=(2, 7))
    logits[0, 0, targets[0, 0]] = logits[0, 0, 5] = logits[0, 0].max() + 1.0  # a tie
    allowed = np.ones(V, bool)
    if with_allowed:
        allowed[V - 1] = False
        logits[..., V - 1] -= 1e9
    weights = (rng.random((2, 7)) > 0.3).astype(np.float32)
    a, b = 0.7, 0.3  # d/d logits of a * smoothed_sum + b * nll_sum

    def ours(z):
        loss, nll, _, _ = smoothed_cross_entropy(
            z,
            jnp.asarray(targets, jnp.int32),
            jnp.asarray(weights),
            eps,
            allowed_V=jnp.asarray(allowed) if with_allowed else None,
        )
        return a * loss + b * nll

    got = np.asarray(jax.jit(jax.grad(ours))(jnp.asarray(logits)))

    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(z, dim=-1)
    mask = torch.tensor(allowed)
    q = torch.where(mask, eps / (int(allowed.sum()) - 1), 0.0).expand(2, 7, V).clone()
    t = torch.tensor(targets)
    q.scatter_(-1, t[..., None], 1.0 - eps)
    cross = -(q * torch.where(q > 0, logp, torch.zeros_like(logp))).sum(-1)
    nll = -logp.gather(-1, t[..., None])[..., 0]
    w = torch.tensor(weights, dtype=torch.float64)
    (a * (cross * w).sum() + b * (nll * w).sum()).backward()
    np.testing.assert_allclose(got, z.grad.numpy(), atol=2e-6, rtol=1e-4)
    assert np.abs(got).max() > 0.1


def test_loss_gradient_keeps_the_logits_dtype():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 9)), jnp.bfloat16)

    def loss(z):
        t, w = jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3))
        return smoothed_cross_entropy(z, t, w, 0.1)[0]

    g = jax.grad(loss)(logits)
    assert g.dtype == jnp.bfloat16
    want = jax.grad(loss)(logits.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(want), atol=2e-2)


def test_label_smoothing_spreads_only_over_tokens_the_model_can_emit():
    V, eps = 11, 0.1
    banned = [3, 10]  # e.g. an imported model's <pad>: a -1e9 final-logits bias
    allowed = np.ones(V, bool)
    allowed[banned] = False
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, V)) * 3
    logits[..., banned] -= 1e9
    targets = rng.choice(np.flatnonzero(allowed), size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float64)
    loss, nll, _, _ = smoothed_cross_entropy(
        jnp.asarray(logits, jnp.float32),
        jnp.asarray(targets, jnp.int32),
        jnp.asarray(weights, jnp.float32),
        eps,
        allowed_V=jnp.asarray(allowed),
    )
    want_loss, want_nll = smoothed_reference(logits, targets, weights, eps, allowed)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(nll) == pytest.approx(want_nll, rel=1e-5)
    # Smoothing over all V tokens would charge eps / (V - 1) * 1e9 per token.
    assert float(loss) < 10 * weights.sum()

    # A model predicting the smoothed target over the allowed tokens is at the minimum.
    q = np.where(allowed, eps / (allowed.sum() - 1), 0.0)
    q[2] = 1 - eps
    perfect = np.where(allowed, np.log(np.where(allowed, q, 1.0)), -1e9)
    loss, _, _, _ = smoothed_cross_entropy(
        jnp.asarray(perfect[None, None], jnp.float32),
        jnp.asarray([[2]], jnp.int32),
        jnp.ones((1, 1), jnp.float32),
        eps,
        allowed_V=jnp.asarray(allowed),
    )
    assert abs(float(loss)) < 1e-5

    # Every token allowed: the paper's smoothing over the whole vocabulary, unchanged.
    plain = jnp.asarray(rng.normal(size=(3, 5, V)) * 3, jnp.float32)
    everything = [
        float(
            smoothed_cross_entropy(
                plain,
                jnp.asarray(targets, jnp.int32),
                jnp.asarray(weights, jnp.float32),
                eps,
                allowed_V=a,
            )[0]
        )
        for a in (None, jnp.ones(V, bool))
    ]
    assert everything[0] == pytest.approx(everything[1], rel=1e-6)
