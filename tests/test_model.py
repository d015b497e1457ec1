"""Invariants of the translation EncoderDecoder: causality, padding, packing, cached decoding,
jit, logical axis names, positions, dropout, tying, parameter counts and config validation."""

from __future__ import annotations

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.nn.config import TransformerConfig, config_from_json, config_to_json
from transformer_jax.nn.embed import add_positions, sinusoid_table
from transformer_jax.tasks.translation.model import EncoderDecoder

PAD, START = 0, 2
VOCAB = 60
ATOL = 1e-5
AXIS_NAMES = {"vocab", "embed", "heads", "kv_heads", "kv", "mlp"}


def tiny(**overrides) -> TransformerConfig:
    base = dict(
        vocab_size=VOCAB,
        d_model=32,
        num_heads=4,
        d_ff=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.1,
        max_position=64,
        pad_id=PAD,
        decoder_start_id=START,
    )
    base.update(overrides)
    return TransformerConfig(**base)


def abstract_params(cfg: TransformerConfig, boxed: bool = False) -> dict:
    """Parameter shapes from an abstract `init` (nothing is allocated)."""
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    params = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), ids, ids)["params"]
    if boxed:
        return params
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    return jax.tree.map(lambda x: x.value if is_box(x) else x, params, is_leaf=is_box)


@functools.cache
def init_params(cfg: TransformerConfig) -> dict:
    """Random float32 params with informative norm scales and biases (not just ones/zeros).

    They do not depend on the decode/deterministic flags, so one set serves all modes.
    """
    shapes = abstract_params(cfg.replace(decode=False, deterministic=True))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * noise)
        if name in ("bias", "final_logits_bias"):
            return jnp.asarray(0.1 * noise)
        return jnp.asarray(0.15 * noise)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def run(cfg: TransformerConfig, src, tgt, **kwargs) -> np.ndarray:
    params = init_params(cfg)
    kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
    out = EncoderDecoder(cfg).apply(
        {"params": params}, jnp.asarray(src), jnp.asarray(tgt), **kwargs
    )
    return np.asarray(out)


def tokens(rng: np.random.Generator, shape, low: int = 3, high: int = VOCAB) -> np.ndarray:
    return rng.integers(low, high, size=shape).astype(np.int32)


def pad_after(ids: np.ndarray, lengths) -> np.ndarray:
    ids = ids.copy()
    for b, n in enumerate(lengths):
        ids[b, n:] = PAD
    return ids


def shift_right_np(tgt: np.ndarray) -> np.ndarray:
    B = tgt.shape[0]
    return np.concatenate([np.full((B, 1), START, np.int32), tgt[:, :-1]], axis=1)


# Most tests share these shapes so that compiled kernels are reused across tests.
B, S, T = 2, 6, 5


# ----------------------------------------------------------------------------- causality


def test_logits_do_not_depend_on_future_targets():
    cfg = tiny()
    rng = np.random.default_rng(0)
    src = pad_after(tokens(rng, (B, S)), [6, 4])
    tgt = tokens(rng, (B, T))
    base = run(cfg, src, tgt)
    for t in range(T):
        changed = tgt.copy()
        # Non-pad replacements that differ from the original tokens.
        shift = rng.integers(1, VOCAB - 3, tgt[:, t:].shape)
        changed[:, t:] = (tgt[:, t:] - 3 + shift) % (VOCAB - 3) + 3
        assert np.all(changed[:, t:] != tgt[:, t:])
        out = run(cfg, src, changed)
        # logits[:, t'] predicts targets[:, t'] from targets[:, :t'], so positions <= t keep.
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        if t + 1 < T:
            assert np.abs(out[:, t + 1 :] - base[:, t + 1 :]).max() > 1e-3


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_decoder_gradients_are_causal(norm_position):
    """d logits[:, t] / d (decoder input embedding at t') is exactly zero for t' > t."""
    cfg = tiny(norm_position=norm_position)
    params = init_params(cfg)
    rng = np.random.default_rng(1)
    src = jnp.asarray(pad_after(tokens(rng, (B, S)), [6, 3]))
    model = EncoderDecoder(cfg)
    enc_seg = (src != PAD).astype(jnp.int32)
    encoded = model.apply({"params": params}, src, method=EncoderDecoder.encode)

    def logits_from_embeddings(module, y_BTD):
        pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        seg = jnp.ones((B, T), jnp.int32)
        return module.logits(module.decoder(y_BTD, encoded, seg, pos, enc_seg))

    def per_position_logit_sums(y_BTD):
        out_BTV = model.apply({"params": params}, y_BTD, method=logits_from_embeddings)
        return out_BTV.sum(axis=(0, 2))  # [T]

    y = jax.random.normal(jax.random.key(3), (B, T, cfg.d_model))
    jac_TBTD = jax.jit(jax.jacrev(per_position_logit_sums))(y)
    influence_TT = np.asarray(jnp.abs(jac_TBTD).sum(axis=(1, 3)))  # [t (output), t' (input)]
    strictly_future = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(influence_TT[strictly_future] == 0.0)
    assert np.all(influence_TT[~strictly_future] > 0.0)


# ------------------------------------------------------------------------------- padding


def test_padding_content_and_length_do_not_matter():
    cfg = tiny()
    rng = np.random.default_rng(2)
    src = pad_after(tokens(rng, (B, S)), [6, 3])
    tgt = pad_after(tokens(rng, (B, T)), [3, 5])
    src_seg = (src != PAD).astype(np.int32)
    tgt_seg = (tgt != PAD).astype(np.int32)
    base = run(cfg, src, tgt)
    valid = tgt != PAD
    assert np.all(np.isfinite(base))

    # Arbitrary tokens under the padding, declared as padding by the segment ids.
    src_garbage = np.where(src == PAD, tokens(rng, src.shape), src)
    tgt_garbage = np.where(tgt == PAD, tokens(rng, tgt.shape), tgt)
    out = run(cfg, src_garbage, tgt, inputs_segmentation=src_seg)
    np.testing.assert_allclose(out[valid], base[valid], rtol=0, atol=ATOL)
    out = run(cfg, src, tgt_garbage, targets_segmentation=tgt_seg)
    np.testing.assert_allclose(out[valid], base[valid], rtol=0, atol=ATOL)

    # More padding columns on either side.
    longer_src = np.concatenate([src, np.zeros((B, 3), np.int32)], axis=1)
    longer_tgt = np.concatenate([tgt, np.zeros((B, 3), np.int32)], axis=1)
    out = run(cfg, longer_src, longer_tgt)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, :T][valid], base[valid], rtol=0, atol=ATOL)

    # Sanity: a real source token does matter.
    other = src.copy()
    other[1, 1] = 3 + (src[1, 1] - 3 + 1) % (VOCAB - 3)
    assert np.abs(run(cfg, other, tgt)[1][valid[1]] - base[1][valid[1]]).max() > 1e-3


# ------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_packed_rows_equal_separate_examples(norm_position):
    cfg = tiny(norm_position=norm_position)
    rng = np.random.default_rng(4)
    src_a, tgt_a = tokens(rng, 3), tokens(rng, 4)
    src_b, tgt_b = tokens(rng, 4), tokens(rng, 3)

    # One example per row (padded).
    src = np.zeros((B, S), np.int32)
    tgt = np.zeros((B, T), np.int32)
    src[0, :3], tgt[0, :4] = src_a, tgt_a
    src[1, :4], tgt[1, :3] = src_b, tgt_b
    alone = run(cfg, src, tgt)

    # Both examples in each row, in either order, with segment ids and restarting positions.
    def pack(first, second, length):
        ids, seg, pos = (np.zeros(length, np.int32) for _ in range(3))
        n, m = len(first), len(second)
        ids[: n + m] = np.concatenate([first, second])
        seg[:n], seg[n : n + m] = 1, 2
        pos[:n], pos[n : n + m] = np.arange(n), np.arange(m)
        return ids, seg, pos

    rows = [
        (pack(src_a, src_b, S + 3), pack(tgt_a, tgt_b, T + 3)),
        (pack(src_b, src_a, S + 3), pack(tgt_b, tgt_a, T + 3)),
    ]
    src_p, src_seg, src_pos = (np.stack([r[0][i] for r in rows]) for i in range(3))
    tgt_p, tgt_seg, tgt_pos = (np.stack([r[1][i] for r in rows]) for i in range(3))
    packed = run(
        cfg,
        src_p,
        tgt_p,
        inputs_segmentation=src_seg,
        targets_segmentation=tgt_seg,
        inputs_position=src_pos,
        targets_position=tgt_pos,
    )
    np.testing.assert_allclose(packed[0, :4], alone[0, :4], rtol=0, atol=ATOL)
    np.testing.assert_allclose(packed[0, 4:7], alone[1, :3], rtol=0, atol=ATOL)
    np.testing.assert_allclose(packed[1, :3], alone[1, :3], rtol=0, atol=ATOL)
    np.testing.assert_allclose(packed[1, 3:7], alone[0, :4], rtol=0, atol=ATOL)


# ------------------------------------------------------------------------ cached decoding


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(norm_position="pre"),
        dict(num_kv_heads=2),
        dict(num_kv_heads=2, norm_position="pre", attention_bias=True),
    ],
    ids=["post", "pre", "gqa", "gqa-pre-bias"],
)
def test_cached_decoding_matches_teacher_forcing(overrides):
    cfg = tiny(**overrides)
    params = init_params(cfg)
    rng = np.random.default_rng(5)
    src = pad_after(tokens(rng, (B, S)), [6, 3])
    tgt = tokens(rng, (B, T))
    full = run(cfg, src, tgt)
    dec_in = shift_right_np(tgt)

    model = EncoderDecoder(cfg.replace(decode=True))

    def fresh_cache():
        # A longer cache than needed: unwritten slots must stay invisible.
        _, state = model.apply(
            {"params": params},
            jnp.asarray(src),
            T + 3,
            method=EncoderDecoder.init_cache,
            mutable=["cache"],
        )
        return state["cache"]

    def step(cache, ids):
        logits, state = model.apply(
            {"params": params, "cache": cache},
            jnp.asarray(ids),
            method=EncoderDecoder.decode_step,
            mutable=["cache"],
        )
        return np.asarray(logits), state["cache"]

    cache = fresh_cache()
    for t in range(T):
        logits, cache = step(cache, dec_in[:, t : t + 1])
        assert logits.shape == (B, cfg.vocab_size)
        np.testing.assert_allclose(logits, full[:, t], rtol=0, atol=ATOL, err_msg=f"step {t}")

    # A multi-token first call (prefill) followed by single steps gives the same logits.
    cache = fresh_cache()
    logits, cache = step(cache, dec_in[:, :3])
    np.testing.assert_allclose(logits, full[:, 2], rtol=0, atol=ATOL)
    for t in range(3, T):
        logits, cache = step(cache, dec_in[:, t : t + 1])
        np.testing.assert_allclose(logits, full[:, t], rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------- jit


def test_jit_matches_eager():
    cfg = tiny(norm_position="pre", num_kv_heads=2)
    params = init_params(cfg)
    rng = np.random.default_rng(6)
    src = jnp.asarray(pad_after(tokens(rng, (B, S)), [6, 2]))
    tgt = jnp.asarray(pad_after(tokens(rng, (B, T)), [5, 3]))
    model = EncoderDecoder(cfg)
    eager = model.apply({"params": params}, src, tgt)
    jitted = jax.jit(model.apply)({"params": params}, src, tgt)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=0, atol=ATOL)


# ------------------------------------------------------------------ logical axis names


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(
            norm_position="pre",
            attention_bias=True,
            num_kv_heads=2,
            share_embeddings=False,
            target_vocab_size=40,
            tie_output=False,
            final_logits_bias=True,
        ),
    ],
    ids=["default", "everything"],
)
def test_every_parameter_has_logical_axis_names(overrides):
    cfg = tiny(**overrides)
    boxed = abstract_params(cfg, boxed=True)
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]
    assert len(leaves) > 10
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert is_box(leaf), f"{where} has no logical axis names"
        assert len(leaf.names) == len(leaf.value.shape), f"{where}: {leaf.names} {leaf.value.shape}"
        assert set(leaf.names) <= AXIS_NAMES, f"{where}: {leaf.names}"


# ----------------------------------------------------------------------------- positions


def paper_table(max_len: int, dim: int, layout: str) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), float64."""
    pos = np.arange(max_len, dtype=np.float64)
    sin_cols, cos_cols = [], []
    for i in range(dim // 2):
        angle = pos / (10000.0 ** (2.0 * i / dim))
        sin_cols.append(np.sin(angle))
        cos_cols.append(np.cos(angle))
    if layout == "interleaved":
        cols = [c for pair in zip(sin_cols, cos_cols) for c in pair]
    else:
        cols = sin_cols + cos_cols
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("layout", ["interleaved", "halves"])
@pytest.mark.parametrize("max_len,dim", [(50, 32), (1024, 512)])
def test_sinusoid_table_matches_paper(layout, max_len, dim):
    ours = sinusoid_table(max_len, dim, layout)
    ref = paper_table(max_len, dim, layout)
    assert ours.shape == (max_len, dim)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


def test_sinusoid_layouts_at_known_points():
    inter = sinusoid_table(3, 4, "interleaved")
    halves = sinusoid_table(3, 4, "halves")
    f1 = 10000.0 ** (-2.0 / 4)
    np.testing.assert_allclose(inter[0], [0, 1, 0, 1], atol=0)
    np.testing.assert_allclose(halves[0], [0, 0, 1, 1], atol=0)
    np.testing.assert_allclose(
        inter[2], [math.sin(2), math.cos(2), math.sin(2 * f1), math.cos(2 * f1)], atol=1e-6
    )
    np.testing.assert_allclose(
        halves[2], [math.sin(2), math.sin(2 * f1), math.cos(2), math.cos(2 * f1)], atol=1e-6
    )


@pytest.mark.parametrize("layout", ["interleaved", "halves"])
def test_model_embedding_is_scaled_table_plus_positions(layout):
    cfg = tiny(position_layout=layout)
    params = init_params(cfg)
    rng = np.random.default_rng(7)
    ids = tokens(rng, (2, 5))
    pos = np.array([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]], np.int32)

    def embed(module, ids, pos):
        return module._embed(module.source_embed, ids, pos)

    out = EncoderDecoder(cfg).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(pos), method=embed
    )
    table = np.asarray(params["embed"]["embedding"], np.float64)
    ref = (
        table[ids] * math.sqrt(cfg.d_model)
        + paper_table(cfg.max_position, cfg.d_model, layout)[pos]
    )
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=ATOL)

    zeros = jnp.zeros((2, 5, cfg.d_model))
    np.testing.assert_allclose(
        np.asarray(add_positions(zeros, jnp.asarray(pos), cfg)),
        paper_table(cfg.max_position, cfg.d_model, layout)[pos],
        rtol=0,
        atol=2e-6,
    )


# ------------------------------------------------------------------------------- dropout


def test_dropout_is_active_only_when_not_deterministic():
    cfg = tiny(dropout_rate=0.3)
    params = {"params": init_params(cfg)}
    rng = np.random.default_rng(8)
    src = jnp.asarray(pad_after(tokens(rng, (B, S)), [6, 3]))
    tgt = jnp.asarray(tokens(rng, (B, T)))

    # deterministic=True needs no rng and ignores one if given.
    det = EncoderDecoder(cfg).apply(params, src, tgt)
    det_with_rng = EncoderDecoder(cfg).apply(params, src, tgt, rngs={"dropout": jax.random.key(9)})
    np.testing.assert_array_equal(np.asarray(det), np.asarray(det_with_rng))

    train = EncoderDecoder(cfg.replace(deterministic=False))
    a = train.apply(params, src, tgt, rngs={"dropout": jax.random.key(1)})
    a_again = train.apply(params, src, tgt, rngs={"dropout": jax.random.key(1)})
    b = train.apply(params, src, tgt, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a_again))
    assert np.abs(np.asarray(a) - np.asarray(det)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    with pytest.raises(flax.errors.InvalidRngError):
        train.apply(params, src, tgt)

    # Rate zero: training mode computes the deterministic function.
    no_drop = EncoderDecoder(cfg.replace(deterministic=False, dropout_rate=0.0))
    out = no_drop.apply(params, src, tgt, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(np.asarray(out), np.asarray(det), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ shared, tied


def test_embedding_is_shared_and_tied():
    cfg = tiny()
    params = init_params(cfg)
    assert set(params) == {"embed", "encoder", "decoder"}
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    tables = [p for p in paths if "embedding" in p]
    assert tables == ["['embed']['embedding']"]

    rng = np.random.default_rng(10)
    src = tokens(rng, (B, S), 3, 20)  # source ids in [3, 20)
    tgt = tokens(rng, (B, T), 20, 40)  # target ids in [20, 40)
    model = EncoderDecoder(cfg)
    base = np.asarray(model.apply({"params": params}, jnp.asarray(src), jnp.asarray(tgt)))

    delta = jnp.asarray(np.random.default_rng(12).normal(size=cfg.d_model), jnp.float32)

    def with_row(row: int) -> np.ndarray:
        table = params["embed"]["embedding"].at[row].add(delta)
        p = {**params, "embed": {"embedding": table}}
        return np.asarray(model.apply({"params": p}, jnp.asarray(src), jnp.asarray(tgt)))

    # Tied output: a row never read as input only moves its own logit column.
    unused = 45
    out = with_row(unused)
    others = np.arange(cfg.vocab_size) != unused
    np.testing.assert_allclose(out[..., others], base[..., others], rtol=0, atol=1e-6)
    assert np.abs(out[..., unused] - base[..., unused]).min() > 1e-4

    # Shared: a row read only by the encoder changes the decoder's logits.
    out = with_row(int(src[0, 0]))
    assert np.abs(out[0] - base[0]).max() > 1e-3


def test_untied_unshared_has_separate_tables():
    cfg = tiny(share_embeddings=False, target_vocab_size=40, tie_output=False)
    params = init_params(cfg)
    assert params["embed"]["embedding"].shape == (VOCAB, 32)
    assert params["target_embed"]["embedding"].shape == (40, 32)
    assert params["logits_dense"]["kernel"].shape == (32, 40)
    rng = np.random.default_rng(11)
    out = run(cfg, tokens(rng, (B, S)), tokens(rng, (B, T), 3, 40))
    assert out.shape == (B, T, 40)


# ------------------------------------------------------------------------ param counts


def count_abstract_params(cfg: TransformerConfig) -> int:
    shapes = abstract_params(cfg)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def paper_param_count(V: int, D: int, F: int, N: int) -> int:
    """Shared embedding, bias-free attention projections, biased FFN, LayerNorm gain+bias."""
    attention = 4 * D * D
    ffn = 2 * D * F + F + D
    norm = 2 * D
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    return V * D + N * (encoder_layer + decoder_layer)


def test_paper_base_has_about_65m_parameters():
    cfg = TransformerConfig(vocab_size=37000)
    n = count_abstract_params(cfg)
    assert 60e6 <= n <= 66e6, n
    assert n == paper_param_count(37000, 512, 2048, 6)


def test_paper_big_has_about_213m_parameters():
    cfg = TransformerConfig(vocab_size=37000, d_model=1024, d_ff=4096, num_heads=16)
    n = count_abstract_params(cfg)
    assert 200e6 <= n <= 220e6, n
    assert n == paper_param_count(37000, 1024, 4096, 6)


# -------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(num_heads=5), "num_heads"),
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(num_kv_heads=-2), "num_kv_heads"),
        (dict(head_dim=0), "head_dim"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_model=-8), "d_model"),
        (dict(d_ff=0), "d_ff"),
        (dict(max_position=0), "max_position"),
        (dict(num_encoder_layers=-1), "num_encoder_layers"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(dropout_rate=-0.1), "dropout_rate"),
        (dict(activation="tanh"), "activation"),
        (dict(norm_position="sandwich"), "norm_position"),
        (dict(position_layout="learned"), "position_layout"),
        (dict(remat="sometimes"), "remat"),
        (dict(share_embeddings=False), "target_vocab_size"),
    ],
)
def test_invalid_config_raises_value_error_naming_key(overrides, key):
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        tiny(**overrides)


def test_valid_variants_are_accepted():
    tiny(num_kv_heads=1)
    assert tiny(num_kv_heads=0).kv_heads == 4  # 0 and None both mean num_heads
    tiny(num_kv_heads=4, head_dim=16)
    tiny(d_model=30, num_heads=4, head_dim=8)  # explicit head_dim lifts divisibility
    tiny(share_embeddings=False, target_vocab_size=7)


def test_config_json_round_trip_and_unknown_fields():
    cfg = tiny(num_kv_heads=2, dtype=jnp.bfloat16)
    blob = config_to_json(cfg)
    assert blob["dtype"] == "bfloat16"
    assert config_from_json(blob) == cfg
    with pytest.raises(ValueError, match="not_a_field"):
        config_from_json({**blob, "not_a_field": 1})
