"""The fast paths of cached decoding: top-p without a sort, last-column prefill logits,
and the in-place slot cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_cached_decoding import config, init_params
from transformer_jax.decode import cached
from transformer_jax.decode.search import _top_p_threshold
from transformer_jax.nn.lm import CausalLM, cached_decoding_fns


def sorted_top_p_threshold(scaled, top_p):
    """The sorted-cumulative-sum rule: keep tokens whose mass before them is below top_p."""
    sorted_desc = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    first = (jnp.arange(sorted_desc.shape[-1]) == 0)[None, :]
    keep = (mass_before < top_p) | first
    return jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)


@pytest.mark.parametrize("vocab, scale", [(5, 1.0), (64, 3.0), (3000, 0.5)])
def test_top_p_threshold_matches_the_sorted_rule(vocab, scale):
    rng = np.random.default_rng(vocab)
    scaled = rng.normal(size=(6, vocab)).astype(np.float32) * scale
    scaled[1, 1:3] = scaled[1, 0]  # ties
    scaled[2, :2] = -np.inf  # top-k filtered
    scaled[3] = 0.0  # uniform
    scaled = jnp.asarray(scaled)
    fast = jax.jit(_top_p_threshold)
    for top_p in (0.0, 0.05, 0.3, 0.5, 0.75, 0.9, 0.99):
        want = sorted_top_p_threshold(scaled, top_p)
        np.testing.assert_array_equal(fast(scaled, jnp.float32(top_p)), want, err_msg=str(top_p))
    # top_p >= 1 keeps every token, -inf ones included (they have no probability anyway).
    assert (np.asarray(fast(scaled, jnp.float32(1.0))) == -np.inf).all()


def test_prefill_logits_of_the_last_columns_only():
    cfg = config("gpt")
    params = init_params(cfg)
    init_cache, prefill, _ = cached_decoding_fns(CausalLM(cfg))
    ids = jnp.asarray([[5, 9, 17, 3], [0, 0, 11, 4]], jnp.int32)
    mask = (ids != 0).astype(jnp.int32)
    layout = cached.prompt_layout(mask)
    args = (ids, layout.positions, layout.segment_ids)
    full, _ = prefill(params, init_cache(params, 2, 8), *args)
    last, cache = prefill(
        params, init_cache(params, 2, 8), *args, logits_index_B=jnp.asarray([3, 3])
    )
    assert last.shape == (2, 1, cfg.vocab_size)
    np.testing.assert_allclose(last[:, 0], full[:, 3], rtol=1e-5, atol=1e-5)
    # prefill_prompts passes each row's last real column to a prefill that takes it.
    first = cached.prefill_prompts(prefill, params, init_cache(params, 2, 8), ids, mask)
    np.testing.assert_allclose(first.logits, full[:, 3], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        first.cache["decoder"]["layer_0"]["self_attention"]["cache_index"], [4, 4]
    )


def test_slot_cache_is_written_in_place_in_its_attention_layout():
    cfg = config("llama")  # grouped-query: 2 key heads
    params = init_params(cfg)
    init_cache, prefill, step = cached_decoding_fns(CausalLM(cfg))
    cache = init_cache(params, 2, 8)
    leaf = cache["decoder"]["layer_0"]["self_attention"]
    assert leaf["cached_key"].shape == (2, 2, 8, cfg.dim_per_head)  # [B, K, S, H]
    ids = jnp.asarray([[5, 9, 17], [11, 4, 7]], jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(3, dtype=jnp.int32), (2, 3))
    _, cache = prefill(params, cache, ids, pos, jnp.ones_like(ids))
    stepped = jax.jit(step, donate_argnums=(1,))
    hlo = stepped.lower(params, cache, ids[:, :1], pos[:, :1] + 3).compile().as_text()
    # One dynamic-update-slice per cache leaf (in place), no rewrite of the whole cache
    # by a select, and no copy of the keys or values for the attention matmuls.
    key_shape = f"f32[2,2,8,{cfg.dim_per_head}]"
    for line in hlo.splitlines():
        if "=" in line and line.split("=")[1].strip().startswith(key_shape):
            op = line.split("=")[1].split("(")[0]
            assert " copy" not in op and "transpose" not in op, line
