"""Learning rate schedules, AdamW with its weight-decay mask, and their config keys, against
closed-form NumPy float64 formulas and PyTorch's `torch.optim.AdamW`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer_jax.config import ConfigError, apply_overrides
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.translation.config import translation_base
from transformer_jax.train.optim import decay_mask, make_optimizer, make_schedule


def opt_config(*overrides: str):
    """The base run config's optimizer group after `key=value` overrides (validated)."""
    return apply_overrides(translation_base(), list(overrides)).optimizer


# --- closed-form references (float64, 1-based steps) ---


def paper_lr(step: int, d_model: int, warmup: int, scale: float) -> float:
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def warmup_decay_lr(
    step: int, kind: str, peak: float, warmup: int, decay: int, final: float
) -> float:
    if step < warmup:
        return peak * step / warmup
    if step >= decay:
        return peak * final
    t = (step - warmup) / (decay - warmup)
    shape = (1 + math.cos(math.pi * t)) / 2 if kind == "cosine" else 1 - t
    return peak * (final + (1 - final) * shape)


def boundary_steps(*marks: int) -> list[int]:
    steps = {1, 2, 3}
    for m in marks:
        steps |= {m - 2, m - 1, m, m + 1, m + 2, 2 * m, 10 * m}
    return sorted(s for s in steps if s >= 1)


def check_schedule(schedule, reference, steps, peak):
    # Optax counts updates from 0: update n is step n + 1.
    got = np.asarray(schedule(jnp.asarray(steps, jnp.int32) - 1), np.float64)
    want = np.array([reference(s) for s in steps], np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=peak * 1e-7)
    for s in steps[:: max(1, len(steps) // 20)]:  # also one step at a time (a Python int)
        assert float(schedule(s - 1)) == pytest.approx(reference(s), rel=2e-6, abs=peak * 1e-7)


@pytest.mark.parametrize("d_model, warmup, scale", [(512, 4000, 1.0), (32, 20, 2.0), (8, 1, 0.5)])
def test_rsqrt_schedule_is_the_papers(d_model, warmup, scale):
    opt = opt_config(f"optimizer.warmup_steps={warmup}", f"optimizer.lr_scale={scale}")
    steps = sorted(set(boundary_steps(warmup, 100_000)) | set(range(1, 3 * warmup + 50, 7)))
    peak = paper_lr(warmup, d_model, warmup, scale)
    check_schedule(
        make_schedule(opt, d_model), lambda s: paper_lr(s, d_model, warmup, scale), steps, peak
    )


DECAYS = [
    # kind, peak, warmup, decay_steps, final fraction
    ("cosine", 1e-3, 100, 1000, 0.0),
    ("cosine", 3e-4, 10, 57, 0.1),
    ("cosine", 0.5, 0, 40, 0.25),
    ("linear", 1e-3, 100, 1000, 0.0),
    ("linear", 2e-3, 1, 2, 0.5),
    ("linear", 7e-4, 0, 300, 1.0),
]


@pytest.mark.parametrize("kind, peak, warmup, decay, final", DECAYS)
def test_warmup_decay_schedules_match_the_closed_form(kind, peak, warmup, decay, final):
    opt = opt_config(
        f"optimizer.schedule={kind}",
        f"optimizer.peak_lr={peak}",
        f"optimizer.warmup_steps={warmup}",
        f"optimizer.decay_steps={decay}",
        f"optimizer.final_lr_fraction={final}",
    )
    steps = sorted(set(boundary_steps(max(warmup, 1), decay)) | set(range(1, decay + 30, 3)))
    schedule = make_schedule(opt, d_model=512, num_steps=123_456)  # decay_steps wins
    check_schedule(
        schedule, lambda s: warmup_decay_lr(s, kind, peak, warmup, decay, final), steps, peak
    )
    # The shape: the peak at the end of warmup, the final value from decay_steps on.
    assert float(schedule(max(warmup, 1) - 1)) == pytest.approx(
        peak if warmup else warmup_decay_lr(1, kind, peak, 0, decay, final), rel=1e-6
    )
    assert float(schedule(decay - 1)) == pytest.approx(peak * final, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_steps_zero_follows_train_num_steps(kind):
    cfg = apply_overrides(
        translation_base(),
        [f"optimizer.schedule={kind}", "optimizer.warmup_steps=10", "train.num_steps=90"],
    )
    opt = cfg.optimizer
    assert opt.decay_steps == 0
    schedule = make_schedule(opt, 512, cfg.train.num_steps)
    steps = list(range(1, 120))
    check_schedule(
        schedule, lambda s: warmup_decay_lr(s, kind, opt.peak_lr, 10, 90, 0.0), steps, opt.peak_lr
    )
    with pytest.raises(ValueError, match="train.num_steps"):
        make_schedule(opt, 512)


# --- AdamW with the mask, against PyTorch ---


def small_params() -> dict:
    """A few small tensors named like the translation model's parameters."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)

    return {
        "embed": {"embedding": r(7, 4)},
        "encoder": {
            "layer_0": {
                "attention_block": {"norm": {"scale": 1 + r(4) / 4, "bias": r(4)}},
                "self_attention": {"query": {"kernel": r(4, 2, 2), "bias": r(2, 2)}},
                "mlp": {"wi": {"kernel": r(4, 6), "bias": r(6)}, "wo": {"kernel": r(6, 4)}},
            },
            "final_norm": {"scale": 1 + r(4) / 4},
        },
        "final_logits_bias": r(7),
        "logits_dense": {"kernel": r(4, 7)},
    }


def torch_adamw(params, grads_by_step, lrs, decayed, *, b1, b2, eps, wd):
    """PyTorch AdamW in float64 with two groups: `decayed` paths, and the rest with no decay."""
    torch = pytest.importorskip("torch")
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    tensors = {
        k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in flat.items()
    }
    groups = [
        {"params": [t for k, t in tensors.items() if k in decayed], "weight_decay": wd},
        {"params": [t for k, t in tensors.items() if k not in decayed], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lrs[0], betas=(b1, b2), eps=eps)
    for grads, lr in zip(grads_by_step, lrs):
        flat_g = {jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_leaves_with_path(grads)}
        for k, t in tensors.items():
            t.grad = torch.tensor(np.asarray(flat_g[k], np.float64))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


NO_DECAY_BY_DEFAULT = {
    "['embed']['embedding']",
    "['encoder']['layer_0']['attention_block']['norm']['scale']",
    "['encoder']['layer_0']['attention_block']['norm']['bias']",
    "['encoder']['layer_0']['self_attention']['query']['bias']",
    "['encoder']['layer_0']['mlp']['wi']['bias']",
    "['encoder']['final_norm']['scale']",
    "['final_logits_bias']",
}


@pytest.mark.parametrize(
    "switches, also_decayed",
    [
        ((), set()),
        (
            ("optimizer.decay_embeddings=true",),
            {"['embed']['embedding']"},
        ),
        (
            ("optimizer.decay_norms=true", "optimizer.decay_biases=true"),
            NO_DECAY_BY_DEFAULT - {"['embed']['embedding']"},
        ),
    ],
)
def test_adamw_with_mask_matches_torch_adamw(switches, also_decayed):
    b1, b2, eps, wd, peak, warmup, decay = 0.9, 0.98, 1e-8, 0.1, 0.05, 2, 6
    opt = opt_config(
        "optimizer.schedule=cosine",
        f"optimizer.peak_lr={peak}",
        f"optimizer.warmup_steps={warmup}",
        f"optimizer.decay_steps={decay}",
        "optimizer.final_lr_fraction=0.1",
        f"optimizer.weight_decay={wd}",
        f"optimizer.b1={b1}",
        f"optimizer.b2={b2}",
        f"optimizer.eps={eps}",
        *switches,
    )
    params = small_params()
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    decayed = (names - NO_DECAY_BY_DEFAULT) | also_decayed
    assert decayed and names - decayed  # two non-empty groups
    rng = np.random.default_rng(1)
    n_steps = 5
    grads_by_step = [
        jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        for _ in range(n_steps)
    ]
    lrs = [warmup_decay_lr(s, "cosine", peak, warmup, decay, 0.1) for s in range(1, n_steps + 1)]
    want = torch_adamw(params, grads_by_step, lrs, decayed, b1=b1, b2=b2, eps=eps, wd=wd)

    tx = make_optimizer(opt, d_model=4)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for grads in grads_by_step:
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, p)
        p = optax.apply_updates(p, updates)
    got = {
        jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(p)
    }
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The decay made a difference where it applies (the check can tell groups apart).
    no_decay = torch_adamw(params, grads_by_step, lrs, set(), b1=b1, b2=b2, eps=eps, wd=wd)
    for k in want:
        assert (np.abs(want[k] - no_decay[k]).max() > 1e-5) == (k in decayed), k


# --- the mask on the translation model's real parameter tree ---


def model_params(**overrides) -> dict:
    """Boxed (`nn.LogicallyPartitioned`) parameter shapes of a one-layer translation model."""
    from transformer_jax.tasks.translation.model import EncoderDecoder

    base = dict(
        vocab_size=60,
        d_model=8,
        num_heads=2,
        d_ff=16,
        num_encoder_layers=1,
        num_decoder_layers=1,
        max_position=16,
        pad_id=0,
        decoder_start_id=2,
    )
    cfg = TransformerConfig(**(base | overrides))
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), ids, ids)["params"]


def mask_paths(mask, params) -> dict[str, bool]:
    import flax.linen as nn

    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    tree = mask(params)
    return {
        jax.tree_util.keystr(p): m
        for p, m in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_box)
    }


ATTENTION = ("query", "key", "value", "out")
POST_LN_WEIGHTS = (
    [f"['encoder']['layer_0']['self_attention']['{m}']['kernel']" for m in ATTENTION]
    + [f"['decoder']['layer_0']['self_attention']['{m}']['kernel']" for m in ATTENTION]
    + [f"['decoder']['layer_0']['cross_attention']['{m}']['kernel']" for m in ATTENTION]
    + [
        f"['{s}']['layer_0']['mlp']['{w}']['kernel']"
        for s in ("encoder", "decoder")
        for w in ("wi", "wo")
    ]
)
NORMS = [
    f"['{s}']['layer_0']['{b}']['norm']['{p}']"
    for s, blocks in (
        ("encoder", ("attention_block", "mlp_block")),
        ("decoder", ("attention_block", "cross_block", "mlp_block")),
    )
    for b in blocks
    for p in ("scale", "bias")
]
MLP_BIASES = [
    f"['{s}']['layer_0']['mlp']['{w}']['bias']"
    for s in ("encoder", "decoder")
    for w in ("wi", "wo")
]


def test_mask_picks_the_weights_of_the_default_translation_model():
    params = model_params()
    got = mask_paths(decay_mask(opt_config("optimizer.weight_decay=0.1")), params)
    assert set(got) == set(POST_LN_WEIGHTS) | set(NORMS) | set(MLP_BIASES) | {
        "['embed']['embedding']"
    }
    assert {k for k, m in got.items() if m} == set(POST_LN_WEIGHTS)

    everything = opt_config(
        "optimizer.decay_norms=true",
        "optimizer.decay_biases=true",
        "optimizer.decay_embeddings=true",
    )
    assert all(mask_paths(decay_mask(everything), params).values())
    for switch, picked in (
        ("decay_norms", NORMS),
        ("decay_biases", MLP_BIASES),
        ("decay_embeddings", ["['embed']['embedding']"]),
    ):
        got = mask_paths(decay_mask(opt_config(f"optimizer.{switch}=true")), params)
        assert {k for k, m in got.items() if m} == set(POST_LN_WEIGHTS) | set(picked), switch


def test_mask_on_scanned_layers():
    params = model_params(scan_layers=True)
    got = mask_paths(decay_mask(opt_config()), params)
    scanned = {k.replace("['layer_0']", "['layers']") for k in POST_LN_WEIGHTS}
    assert {k for k, m in got.items() if m} == scanned
    assert len(got) == len(POST_LN_WEIGHTS) + len(NORMS) + len(MLP_BIASES) + 1


def test_mask_on_a_pre_ln_model_with_every_optional_parameter():
    params = model_params(
        norm_position="pre",
        attention_bias=True,
        share_embeddings=False,
        target_vocab_size=50,
        tie_output=False,
        final_logits_bias=True,
    )
    got = mask_paths(decay_mask(opt_config()), params)
    weights = set(POST_LN_WEIGHTS) | {"['logits_dense']['kernel']"}
    assert {k for k, m in got.items() if m} == weights
    attention_biases = {
        f"['{s}']['layer_0']['{a}']['{m}']['bias']"
        for s, attns in (
            ("encoder", ("self_attention",)),
            ("decoder", ("self_attention", "cross_attention")),
        )
        for a in attns
        for m in ATTENTION
    }
    final_norms = {
        f"['{s}']['final_norm']['{p}']" for s in ("encoder", "decoder") for p in ("scale", "bias")
    }
    not_decayed = (
        set(NORMS)
        | final_norms
        | set(MLP_BIASES)
        | attention_biases
        | {"['embed']['embedding']", "['target_embed']['embedding']", "['final_logits_bias']"}
    )
    assert {k for k, m in got.items() if not m} == not_decayed


def test_adamw_on_the_real_model_decays_exactly_the_masked_leaves():
    """init on boxed params (as the trainer traces it), update on plain ones: with zero
    gradients, AdamW's update is -lr * wd * param on decayed leaves and 0 elsewhere."""
    import flax.linen as nn

    boxed = model_params(norm_position="pre", attention_bias=True, final_logits_bias=True)
    opt = opt_config(
        "optimizer.schedule=constant", "optimizer.lr_scale=0.5", "optimizer.weight_decay=0.1"
    )
    tx = make_optimizer(opt, d_model=8)
    state = jax.eval_shape(tx.init, boxed)  # as the trainer does: from shapes, boxed
    assert jax.tree.structure(nn.unbox(state)) == jax.tree.structure(
        tx.init(ones_like(nn.unbox(boxed)))
    )
    params = ones_like(nn.unbox(boxed))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    decayed = {k for k, m in mask_paths(decay_mask(opt), boxed).items() if m}
    assert decayed and len(decayed) < len(jax.tree.leaves(params))
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        k = jax.tree_util.keystr(path)
        np.testing.assert_allclose(u, -0.05 if k in decayed else 0.0, rtol=1e-6, err_msg=k)


def ones_like(tree):
    return jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), tree)


# --- the defaults: the paper's Adam, as before ---


def numpy_adam(params, grads_by_step, lrs, b1, b2, eps):
    """Adam (Kingma & Ba, with bias correction) in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (grads, lr) in enumerate(zip(grads_by_step, lrs), start=1):
        for k in p:
            g = np.asarray(grads[k], np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("config", ["base", "translate_tiny"])
def test_default_optimizer_is_the_papers_adam_as_before(config):
    from transformer_jax.config import load_config

    cfg = translation_base() if config == "base" else load_config(config)
    cfg = apply_overrides(cfg) if config == "base" else cfg
    opt, d = cfg.optimizer, cfg.model.d_model
    assert (opt.schedule, opt.weight_decay, opt.grad_clip_norm) == ("rsqrt", 0.0, 0.0)
    tx = make_optimizer(opt, d, cfg.train.num_steps)
    # The same state layout as the paper's optimizer always had, so saved runs restore.
    reference = optax.chain(optax.adam(lambda count: 1.0, b1=opt.b1, b2=opt.b2, eps=opt.eps))
    params = {
        "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "b": np.ones(4, np.float32),
    }
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(reference.init(params))

    rng = np.random.default_rng(2)
    grads_by_step = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        for _ in range(4)
    ]
    lrs = [paper_lr(s, d, opt.warmup_steps, opt.lr_scale) for s in range(1, 5)]
    want = numpy_adam(params, grads_by_step, lrs, opt.b1, opt.b2, opt.eps)
    p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
    for grads in grads_by_step:
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-6, atol=1e-9, err_msg=k)


# --- config keys ---


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["optimizer.schedule=cosin"],
            "'optimizer.schedule'='cosin': choose one of rsqrt, cosine, linear, constant",
        ),
        (
            ["optimizer.schedule=cosine", "optimizer.peak_lr=0"],
            "'optimizer.peak_lr'=0.0: must be positive",
        ),
        (
            ["optimizer.schedule=linear", "optimizer.final_lr_fraction=1.5"],
            "'optimizer.final_lr_fraction'=1.5: must be in [0, 1]",
        ),
        (["optimizer.schedule=linear", "optimizer.final_lr_fraction=-0.1"], "must be in [0, 1]"),
        (
            ["optimizer.schedule=cosine", "optimizer.decay_steps=-1"],
            "'optimizer.decay_steps'=-1: must be >= 0 (0 = train.num_steps)",
        ),
        (
            ["optimizer.schedule=cosine", "optimizer.warmup_steps=-1"],
            "'optimizer.warmup_steps'=-1: must be >= 0",
        ),
        (
            ["optimizer.schedule=cosine", "optimizer.decay_steps=4000"],
            "'optimizer.decay_steps'=4000: must be > optimizer.warmup_steps=4000",
        ),
        (
            ["optimizer.schedule=cosine", "train.num_steps=4000"],
            "'train.num_steps'=4000: must be > optimizer.warmup_steps=4000",
        ),
        (["optimizer.warmup_steps=0"], "'optimizer.warmup_steps'=0: must be >= 1"),
        (["optimizer.weight_decay=-0.01"], "'optimizer.weight_decay'=-0.01: must be >= 0"),
        (["optimizer.decay_norms=maybe"], "'optimizer.decay_norms' expects bool, got 'maybe'"),
        (["optimizer.peak_lr=inf"], "must be a finite number"),
    ],
)
def test_invalid_optimizer_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(translation_base(), overrides)
    text = str(e.value)
    assert message in text
    assert "\n" not in text


def test_valid_warmup_decay_settings_load():
    for overrides in (
        ["optimizer.schedule=cosine", "optimizer.warmup_steps=0", "train.num_steps=1"],
        ["optimizer.schedule=linear", "optimizer.decay_steps=4001", "train.num_steps=10"],
        [
            "optimizer.schedule=cosine",
            "optimizer.final_lr_fraction=1.0",
            "optimizer.weight_decay=0.1",
        ],
    ):
        apply_overrides(translation_base(), overrides)  # raises if refused


# --- a training run: the schedule it logs, and resuming with AdamW's masked state ---


@pytest.mark.slow
def test_cosine_adamw_run_logs_its_schedule_and_resumes_exactly(data_dir, tmp_path_factory):
    from helpers import read_metrics, tiny_config, train, train_losses

    peak, warmup, decay, final = 3e-3, 2, 6, 0.1
    settings = dict(
        optimizer__schedule="cosine",
        optimizer__peak_lr=peak,
        optimizer__warmup_steps=warmup,
        optimizer__decay_steps=decay,
        optimizer__final_lr_fraction=final,
        optimizer__weight_decay=0.1,
        train__checkpoint_every=2,
    )
    straight = str(tmp_path_factory.mktemp("cosine_straight"))
    train(tiny_config(data_dir, train__num_steps=6, **settings), straight, tmp_path_factory)
    resumed = str(tmp_path_factory.mktemp("cosine_resumed"))
    train(tiny_config(data_dir, train__num_steps=4, **settings), resumed, tmp_path_factory)
    train(tiny_config(data_dir, train__num_steps=6, **settings), resumed, tmp_path_factory)

    logged = {
        r["step"]: r["train/learning_rate"]
        for r in read_metrics(straight)
        if "train/learning_rate" in r
    }
    assert sorted(logged) == list(range(1, 7))
    for step, lr in logged.items():
        assert lr == pytest.approx(
            warmup_decay_lr(step, "cosine", peak, warmup, decay, final), rel=1e-5
        )
    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(b) == list(range(1, 7))
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
