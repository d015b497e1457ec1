"""Cached decoding of padded prompt batches (decode.cached) vs full recompute per prompt."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.decode import cached
from transformer_jax.decode.search import PAD_ID
from transformer_jax.nn.attention import FUSED_QKV
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.embed import TRANSPOSED_TABLE
from transformer_jax.nn.lm import CausalLM, cached_decoding_fns, decoding_params

V = 48
PROMPTS = [[5, 9, 17, 3, 22, 8, 30], [11, 4], [7, 7, 19, 40], [33]]
NEW = 6


def config(style: str, **overrides) -> TransformerConfig:
    common = dict(
        vocab_size=V,
        d_model=32,
        num_heads=4,
        d_ff=48,
        num_decoder_layers=2,
        dropout_rate=0.0,
        norm_position="pre",
        scale_embeddings=False,
        max_position=32,
    )
    if style == "llama":
        common |= dict(
            num_kv_heads=2,
            norm_type="rms",
            activation="swiglu",
            mlp_bias=False,
            position_type="rope",
            position_layout="halves",
            tie_output=False,
        )
    else:  # gpt
        common |= dict(activation="gelu_tanh", attention_bias=True, position_type="learned")
    return TransformerConfig(**(common | overrides))


def init_params(cfg: TransformerConfig, seed: int = 0):
    """Random weights of the model's shapes, drawn by NumPy (no RNG compilation).

    Weights are larger than the default init so that the logits are decisive (no near-ties).
    Scanned layers get the same weights as unscanned ones, stacked.
    """
    if cfg.scan_layers:
        params = init_params(cfg.replace(scan_layers=False), seed)
        layers = [params["decoder"].pop(f"layer_{i}") for i in range(cfg.num_decoder_layers)]
        params["decoder"]["layers"] = jax.tree.map(lambda *x: np.stack(x), *layers)
        return params
    ids = jnp.zeros((1, 4), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(CausalLM(cfg).init, jax.random.key(0), ids)["params"])
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if leaf.ndim == 1:  # norm scales and biases
            return 1.0 + 0.2 * rng.standard_normal(leaf.shape, np.float32)
        std = 1.0 if "embedding" in jax.tree_util.keystr(path) else leaf.shape[0] ** -0.5
        return std * rng.standard_normal(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def padded(prompts, side: str, pad_token: int = PAD_ID, length: int | None = None):
    T = length or max(map(len, prompts))
    ids = np.full((len(prompts), T), pad_token, np.int32)
    mask = np.zeros((len(prompts), T), np.int32)
    for b, p in enumerate(prompts):
        sl = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[b, sl], mask[b, sl] = p, 1
    return ids, mask


@functools.cache
def _last_logits_fn(cfg: TransformerConfig):
    """Jitted: logits after the first `length` tokens of a right-padded [1, L] row."""

    def last_logits(params, ids_1L, length, prefix_length):
        positions_1L = jnp.arange(ids_1L.shape[1], dtype=jnp.int32)[None]
        seg_1L = (positions_1L < length).astype(jnp.int32)
        prefix_1L = positions_1L < prefix_length
        logits = CausalLM(cfg).apply({"params": params}, ids_1L, seg_1L, prefix_BT=prefix_1L)
        return jnp.take(logits[0], length - 1, axis=0)

    return jax.jit(last_logits)


def recompute_greedy(cfg, params, prompt, n, eos_id, prefix_length=0) -> list[int]:
    """Greedy continuation of one prompt alone, re-running the whole sequence each step.

    The sequence sits in a fixed [1, L] buffer (one compilation); the causal mask keeps the
    unused tail, which comes after every real token, out of every real token's view.
    """
    last_logits = _last_logits_fn(cfg)
    buf = np.zeros((1, max(map(len, PROMPTS)) + NEW), np.int32)
    buf[0, : len(prompt)] = prompt
    length, out = len(prompt), []
    for _ in range(n):
        tok = int(np.argmax(np.asarray(last_logits(params, buf, length, prefix_length))))
        out.append(tok)
        buf[0, length] = tok
        length += 1
        if tok == eos_id:
            break
    return out + [PAD_ID] * (n - len(out))


@functools.cache
def _generate_fn(cfg: TransformerConfig, eos_id: int, top_k: int, sampling: bool):
    init_cache, prefill, step = cached_decoding_fns(CausalLM(cfg))

    def run(params, ids, mask, max_lengths, prefix_lengths, temperature, top_p, rng):
        cache = init_cache(params, ids.shape[0], ids.shape[1] + NEW)
        return cached.generate(
            prefill,
            step,
            params,
            cache,
            ids,
            mask,
            max_new_tokens=NEW,
            eos_id=eos_id,
            max_lengths=max_lengths,
            temperature=temperature if sampling else 0.0,
            top_k=top_k,
            top_p=top_p,
            rng=rng,
            prefix_lengths=prefix_lengths,
        )

    return jax.jit(run)


@functools.cache
def _prefill_fn(cfg: TransformerConfig):
    init_cache, prefill, _ = cached_decoding_fns(CausalLM(cfg))

    def run(params, ids, mask):
        cache = init_cache(params, ids.shape[0], ids.shape[1])
        return cached.prefill_prompts(prefill, params, cache, ids, mask)

    return jax.jit(run)


def run_cached(
    cfg,
    params,
    ids,
    mask,
    *,
    eos_id,
    max_lengths=None,
    prefix_lengths=None,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    rng=None,
):
    """`cached.generate` of NEW tokens, jitted once per config and static option set."""
    fn = _generate_fn(cfg, eos_id, top_k, temperature != 0.0)
    args = (max_lengths, prefix_lengths, jnp.float32(temperature), jnp.float32(top_p), rng)
    return np.asarray(fn(params, jnp.asarray(ids), jnp.asarray(mask), *args))


@pytest.mark.parametrize(
    ("style", "overrides"),
    [("llama", {}), ("gpt", {}), ("llama", {"scan_layers": True})],
)
def test_batched_cached_greedy_equals_recompute_per_prompt(style, overrides) -> None:
    cfg = config(style, **overrides)
    params = init_params(cfg)
    plain = [recompute_greedy(cfg, params, p, NEW, eos_id=-1) for p in PROMPTS]
    # An eos that some row really produces mid-way, so that stopping is exercised.
    eos_id = plain[0][2]
    expected = np.array([recompute_greedy(cfg, params, p, NEW, eos_id) for p in PROMPTS])
    assert (expected == PAD_ID).any() and len({tuple(r) for r in expected}) > 1
    for side in ("left", "right"):
        # Padding tokens that are real vocabulary ids must still never be attended.
        ids, mask = padded(PROMPTS, side, pad_token=13)
        out = run_cached(cfg, params, ids, mask, eos_id=eos_id)
        np.testing.assert_array_equal(out, expected, err_msg=f"{side}-padded")


def test_mixed_padding_and_prefill_logits_match_recompute() -> None:
    """Rows padded on both sides; the prefill's next-token logits equal a lone forward pass."""
    cfg = config("llama")
    params = init_params(cfg, seed=1)
    ids = np.array([[0, 0, 5, 9, 17, 0], [11, 4, 2, 8, 6, 1], [0, 7, 0, 0, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    prompts = [list(r[m != 0]) for r, m in zip(ids, mask, strict=True)]
    first = _prefill_fn(cfg)(params, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_array_equal(first.next_positions, [3, 6, 1])
    for b, p in enumerate(prompts):
        buf = np.zeros((1, 8), np.int32)
        buf[0, : len(p)] = p
        alone = _last_logits_fn(cfg)(params, buf, len(p), 0)
        np.testing.assert_allclose(first.logits[b], alone, atol=1e-5, rtol=1e-5)
    expected = np.array([recompute_greedy(cfg, params, p, NEW, eos_id=-1) for p in prompts])
    out = run_cached(cfg, params, ids, mask, eos_id=V + 1)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_prefix_lm_cached_decoding_equals_recompute(scan_layers: bool) -> None:
    """Prefix-LM: the prompt's first tokens are bidirectional in prefill and in recompute."""
    cfg = config("llama", scan_layers=scan_layers)
    params = init_params(cfg, seed=2)
    prefix_lengths = [4, 1, 3, 1]
    expected = np.array(
        [
            recompute_greedy(cfg, params, p, NEW, eos_id=-1, prefix_length=n)
            for p, n in zip(PROMPTS, prefix_lengths, strict=True)
        ]
    )
    causal = np.array([recompute_greedy(cfg, params, p, NEW, eos_id=-1) for p in PROMPTS])
    assert (expected[0] != causal[0]).any()  # the prefix matters for the long prompt
    for side in ("left", "right"):
        ids, mask = padded(PROMPTS, side)
        out = run_cached(
            cfg, params, ids, mask, eos_id=V + 1, prefix_lengths=jnp.asarray(prefix_lengths)
        )
        np.testing.assert_array_equal(out, expected, err_msg=f"{side}-padded")


def test_sampling_top_k_top_p_and_temperature() -> None:
    cfg = config("gpt")
    params = init_params(cfg, seed=3)
    ids, mask = padded(PROMPTS, "left")
    greedy = run_cached(cfg, params, ids, mask, eos_id=V + 1)
    key = jax.random.key(0)
    # One candidate left: sampling is greedy whatever the temperature.
    tiny_p = run_cached(cfg, params, ids, mask, eos_id=V + 1, temperature=1.0, top_p=1e-6, rng=key)
    np.testing.assert_array_equal(tiny_p, greedy)
    # Hot unrestricted sampling: reproducible for one key, different across keys.
    hot = dict(eos_id=V + 1, temperature=50.0)
    a = run_cached(cfg, params, ids, mask, rng=key, **hot)
    b = run_cached(cfg, params, ids, mask, rng=key, **hot)
    c = run_cached(cfg, params, ids, mask, rng=jax.random.key(1), **hot)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != greedy).any()
    # top_k restricts every sampled token to the k best of its step (checked on step 0).
    first = _prefill_fn(cfg)(params, jnp.asarray(ids), jnp.asarray(mask))
    top3 = np.argsort(-np.asarray(first.logits), axis=-1)[:, :3]
    for seed in range(5):
        s = run_cached(
            cfg,
            params,
            ids,
            mask,
            rng=jax.random.key(seed),
            top_k=3,
            eos_id=V + 1,
            temperature=50.0,
        )
        assert all(s[b, 0] in top3[b] for b in range(len(PROMPTS)))


def test_max_lengths_cap_rows() -> None:
    cfg = config("gpt")
    params = init_params(cfg, seed=4)
    ids, mask = padded(PROMPTS, "right")
    full = run_cached(cfg, params, ids, mask, eos_id=V + 1)
    caps = jnp.asarray([NEW, 2, 0, 4])
    out = run_cached(cfg, params, ids, mask, eos_id=V + 1, max_lengths=caps)
    for b, cap in enumerate(np.asarray(caps)):
        np.testing.assert_array_equal(out[b, :cap], full[b, :cap])
        assert (out[b, cap:] == PAD_ID).all()


@functools.cache
def _beam_fn(cfg: TransformerConfig, eos_id: int, beam_size: int):
    init_cache, prefill, step = cached_decoding_fns(CausalLM(cfg))

    def run(params, ids, mask):
        cache = init_cache(params, ids.shape[0], ids.shape[1] + NEW)
        return cached.beam_generate(
            prefill,
            step,
            params,
            cache,
            ids,
            mask,
            max_new_tokens=NEW,
            eos_id=eos_id,
            beam_size=beam_size,
            alpha=0.6,
        )

    return jax.jit(run)


def test_beam_search_over_padded_prompts() -> None:
    """Each row's beams equal that prompt's beams alone; scores are the recomputed log-probs."""
    cfg = config("llama")
    params = init_params(cfg, seed=5)
    eos_id = recompute_greedy(cfg, params, PROMPTS[1], NEW, eos_id=-1)[1]
    beam = _beam_fn(cfg, eos_id, 3)
    # Each prompt on its own (one compiled shape: right-padded to the longest prompt).
    T = max(map(len, PROMPTS))
    alone = [beam(params, *map(jnp.asarray, padded([p], "right", length=T))) for p in PROMPTS]
    for side in ("left", "right"):
        ids, mask = padded(PROMPTS, side, pad_token=13)
        seqs, scores = beam(params, jnp.asarray(ids), jnp.asarray(mask))
        for b, (seqs_1, scores_1) in enumerate(alone):
            np.testing.assert_array_equal(seqs[b], seqs_1[0], err_msg=f"{side} row {b}")
            np.testing.assert_allclose(scores[b], scores_1[0], atol=1e-5, rtol=1e-5)
    # The best hypothesis' score: its log-probability by full recompute over the penalty.
    last_logits = _last_logits_fn(cfg)
    for b, p in enumerate(PROMPTS):
        best = [int(t) for t in np.asarray(seqs[b, 0])]
        n = best.index(eos_id) + 1 if eos_id in best else NEW
        buf = np.zeros((1, max(map(len, PROMPTS)) + NEW), np.int32)
        buf[0, : len(p)] = p
        logp = 0.0
        for i, tok in enumerate(best[:n]):
            logits = np.asarray(last_logits(params, buf, len(p) + i, 0), np.float64)
            logp += logits[tok] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
            buf[0, len(p) + i] = tok
        np.testing.assert_allclose(scores[b, 0], logp / ((5.0 + n) / 6.0) ** 0.6, rtol=1e-4)
    assert any(eos_id in np.asarray(seqs[b, 0]) for b in range(len(PROMPTS)))


@pytest.mark.parametrize(("style", "overrides"), [("gpt", {}), ("llama", {"scan_layers": True})])
def test_decoding_params_decode_as_the_plain_params(style, overrides) -> None:
    cfg = config(style, **overrides)
    params = init_params(cfg, seed=2)
    laid = decoding_params(cfg, params)

    # The copies: the tied table transposed, each self-attention's kernels joined.
    if cfg.tie_output:
        table = np.asarray(params["embed"]["embedding"])
        np.testing.assert_array_equal(laid["embed"][TRANSPOSED_TABLE], table.T)
    else:
        assert TRANSPOSED_TABLE not in laid["embed"]
    fused = [
        path
        for path, _ in jax.tree_util.tree_leaves_with_path(laid)
        if FUSED_QKV in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)
    ]
    assert len(fused) == (1 if cfg.scan_layers else cfg.num_decoder_layers), fused
    # The originals are kept as they are (the same arrays), the copies added beside them.
    originals = jax.tree_util.tree_leaves_with_path(params)
    kept = dict(jax.tree_util.tree_leaves_with_path(laid))
    assert all(kept[path] is leaf for path, leaf in originals)

    ids, mask = padded(PROMPTS, "left", pad_token=13)
    want = [recompute_greedy(cfg, params, p, NEW, eos_id=-1) for p in PROMPTS]
    np.testing.assert_array_equal(run_cached(cfg, laid, ids, mask, eos_id=-1), np.array(want))
    plain = np.asarray(_prefill_fn(cfg)(params, jnp.asarray(ids), jnp.asarray(mask)).logits)
    got = np.asarray(_prefill_fn(cfg)(laid, jnp.asarray(ids), jnp.asarray(mask)).logits)
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-4)

    # Decoding reads the copies, not the originals: spoiling a copy changes the logits.
    spoiled = [
        jax.tree_util.tree_map_with_path(
            lambda p, x: x * 0 if FUSED_QKV in jax.tree_util.keystr(p) else x, laid
        )
    ]
    for bad in spoiled:
        out = np.asarray(_prefill_fn(cfg)(bad, jnp.asarray(ids), jnp.asarray(mask)).logits)
        assert not np.allclose(out, plain, atol=1e-2)
    if cfg.tie_output:  # the [D, V] copy is read for one row (a few read the table itself)
        table_DV = laid["embed"][TRANSPOSED_TABLE]
        bad = dict(laid, embed=dict(laid["embed"], **{TRANSPOSED_TABLE: table_DV * 0}))
        one = (jnp.asarray(ids[:1]), jnp.asarray(mask[:1]))
        out = np.asarray(_prefill_fn(cfg)(bad, *one).logits)
        assert not np.allclose(out, plain[:1], atol=1e-2)


def test_decoding_params_take_logically_partitioned_params() -> None:
    """What `init` returns (boxed leaves) is laid out as its arrays are."""
    cfg = config("gpt")
    boxed = CausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    assert any(is_box(x) for x in jax.tree.leaves(boxed, is_leaf=is_box))
    laid = decoding_params(cfg, boxed)
    table = np.asarray(nn.unbox(boxed)["embed"]["embedding"])
    np.testing.assert_array_equal(laid["embed"][TRANSPOSED_TABLE], table.T)
    assert not any(is_box(x) for x in jax.tree.leaves(laid, is_leaf=is_box))


@pytest.mark.parametrize("K, G, T", [(4, 1, 1), (2, 3, 1), (2, 3, 4), (1, 4, 3)])
def test_attention_over_the_cache_layout_matches_numpy(K, G, T):
    """`_attend_slots` (queries [B, T, K*G, H] over keys and values [B, K, S, H]) against
    softmax attention in float64, with masked slots and a row that sees no slot."""
    from transformer_jax.nn.attention import _attend_slots

    B, S, H = 3, 7, 8
    rng = np.random.default_rng(K * 100 + G * 10 + T)
    q = rng.standard_normal((B, T, K * G, H))
    k = rng.standard_normal((B, K, S, H))
    v = rng.standard_normal((B, K, S, H))
    visible = rng.random((B, T, S)) < 0.6
    visible[:, :, 0] = True
    visible[1, -1] = False  # a query that sees nothing attends to nothing

    got = _attend_slots(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(visible))

    want = np.zeros((B, T, K * G, H))
    for b in range(B):
        for t in range(T):
            seen = visible[b, t]
            for n in range(K * G):
                if not seen.any():
                    continue
                kv = n // G  # query head n reads key head n // G
                s = k[b, kv, seen] @ q[b, t, n] / np.sqrt(H)
                p = np.exp(s - s.max())
                want[b, t, n] = (p / p.sum()) @ v[b, kv, seen]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
