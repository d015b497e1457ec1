"""The decoding layout (`nn.layout`): what is added, what is kept, and for how long."""

from __future__ import annotations

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.nn.attention import FUSED_QKV
from transformer_jax.nn.embed import TRANSPOSED_TABLE
from transformer_jax.nn.layout import KeptLayout, for_decoding


def _params(seed: int, dtype=np.float32):
    rng = np.random.default_rng(seed)

    def attention():
        return {
            name: {"kernel": jnp.asarray(rng.standard_normal((8, 2, 4)), dtype)}
            for name in ("query", "key", "value", "out")
        }

    return {
        "embed": {"embedding": jnp.asarray(rng.standard_normal((11, 8)), dtype)},
        "encoder": {"layer_0": {"self_attention": attention()}},
        "decoder": {"layer_0": {"self_attention": attention()}},
    }


def test_for_decoding_adds_copies_beside_the_originals() -> None:
    params = _params(0)
    laid = for_decoding(params, tied_tables=[("embed",)], table_dtype=jnp.bfloat16)
    table = laid["embed"][TRANSPOSED_TABLE]
    assert table.dtype == jnp.bfloat16
    want = np.asarray(params["embed"]["embedding"]).T.astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(table), want)
    attn = laid["decoder"]["layer_0"]["self_attention"]
    parts = [np.asarray(attn[n]["kernel"]) for n in ("query", "key", "value")]
    np.testing.assert_array_equal(attn[FUSED_QKV]["kernel"], np.concatenate(parts, axis=-2))
    assert FUSED_QKV not in laid["encoder"]["layer_0"]["self_attention"]  # never decodes
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        got = laid
        for key in path:
            got = got[key.key]
        assert got is leaf  # the originals, not copies of them


@pytest.mark.parametrize(
    ("step_rows", "table_dtype", "copied"),
    [
        (None, None, True),  # unknown: made
        ([8], None, False),  # 2-32 rows read the table itself
        ([2, 32, 16], jnp.float32, False),
        ([1], None, True),  # one row reads the copy
        ([8, 1], None, True),  # the last batch of one
        ([33], None, True),
        ([4 * 16], None, True),  # beam 4 at batch 16
        ([8], jnp.bfloat16, True),  # the table would be cast every step
    ],
)
def test_for_decoding_makes_the_table_copy_only_where_steps_read_it(
    step_rows, table_dtype, copied
) -> None:
    params = _params(0)
    laid = for_decoding(
        params, tied_tables=[("embed",)], table_dtype=table_dtype, step_rows=step_rows
    )
    assert (TRANSPOSED_TABLE in laid["embed"]) == copied
    assert FUSED_QKV in laid["decoder"]["layer_0"]["self_attention"]  # made whatever the rows


def test_kept_layout_with_the_table_copy_serves_loops_that_do_not_read_it() -> None:
    calls = []

    def make(params, step_rows=None):
        calls.append(step_rows)
        return for_decoding(params, tied_tables=[("embed",)], step_rows=step_rows)

    kept = KeptLayout(make)
    params = _params(0)
    few = kept(params, step_rows=[8])
    assert TRANSPOSED_TABLE not in few["embed"]
    assert _same_arrays(kept(params, step_rows=(16, 4)), few) and len(calls) == 1
    one = kept(params, step_rows=[1])  # needs the copy: laid out again
    assert TRANSPOSED_TABLE in one["embed"] and calls == [(8,), (8, 1)]  # for both
    assert _same_arrays(kept(params, step_rows=[8]), one) and len(calls) == 2  # served
    assert _same_arrays(kept(params), one) and len(calls) == 2


def test_for_decoding_lays_nothing_out_inside_a_program() -> None:
    params = _params(0)
    seen = []
    jax.jit(lambda p: seen.append(for_decoding(p, tied_tables=[("embed",)])) or 0)(params)
    assert jax.tree.structure(seen[0]) == jax.tree.structure(params)


def _same_arrays(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    same_tree = jax.tree.structure(a) == jax.tree.structure(b)
    return same_tree and len(la) == len(lb) and all(x is y for x, y in zip(la, lb))


def test_kept_layout_reuses_only_for_the_same_arrays_and_releases_with_them() -> None:
    calls = []

    def make(params, scale, step_rows=None):
        calls.append(scale)
        return jax.tree.map(lambda x: x * scale, params)

    kept = KeptLayout(make)
    first = _params(0)
    a = kept(first, 2.0)
    assert _same_arrays(kept(first, 2.0), a) and calls == [2.0]
    assert not _same_arrays(kept(first, 3.0), a) and calls == [2.0, 3.0]  # another key
    # The same values in new arrays are new params (they could differ later).
    second = jax.tree.map(jnp.array, first)
    b = kept(second, 3.0)
    assert not _same_arrays(b, a) and calls == [2.0, 3.0, 3.0]
    # The first params dying does not drop what was kept for the second.
    del first, a
    gc.collect()
    assert _same_arrays(kept(second, 3.0), b) and len(calls) == 3
    # The second params dying does.
    del second, b
    gc.collect()
    assert kept._kept is None


def test_kept_layout_holds_only_the_copies_not_the_params() -> None:
    """A layout over the params' own arrays (as `for_decoding`'s is) is rebuilt from the
    caller's params on each call: the kept copies are the same, the params are not held,
    and the copies go when the params die."""
    calls = []

    def make(params, step_rows=None):
        calls.append(1)
        return for_decoding(params, tied_tables=[("embed",)], step_rows=step_rows)

    kept = KeptLayout(make)
    params = _params(0)
    laid = kept(params)
    again = kept(params)
    assert len(calls) == 1
    assert again["embed"][TRANSPOSED_TABLE] is laid["embed"][TRANSPOSED_TABLE]
    assert again["embed"]["embedding"] is params["embed"]["embedding"]
    fused = again["decoder"]["layer_0"]["self_attention"][FUSED_QKV]["kernel"]
    assert fused is laid["decoder"]["layer_0"]["self_attention"][FUSED_QKV]["kernel"]
    probe = weakref.ref(params["embed"]["embedding"])
    table = weakref.ref(laid["embed"][TRANSPOSED_TABLE])
    del params, laid, again, fused
    gc.collect()
    assert probe() is None  # not held by the kept layout
    assert kept._kept is None and table() is None  # the copies released with the params


def test_kept_layout_never_keeps_numpy_params() -> None:
    calls = []
    kept = KeptLayout(lambda params, step_rows: calls.append(1) or params)
    host = jax.tree.map(np.array, _params(0))
    kept(host)
    host["embed"]["embedding"][0, 0] += 1.0  # changed in place: the same arrays
    kept(host)
    assert len(calls) == 2


@pytest.mark.parametrize("rows", [1, 2, 8, 32, 48])
def test_tied_logits_over_the_layout_match_float64(rows) -> None:
    """`Embed.attend` over laid-out params, at every row count (one row reads the [D, V]
    copy, 2-32 the table itself as [V, rows], more the copy again), against NumPy in
    float64, and the same as over the plain params."""
    from transformer_jax.nn.config import TransformerConfig
    from transformer_jax.nn.embed import _FEW_ROWS, Embed

    assert 2 <= _FEW_ROWS < 48
    cfg = TransformerConfig(d_model=16, vocab_size=300)
    embed = Embed(300, cfg)
    rng = np.random.default_rng(rows)
    table = rng.standard_normal((300, 16)).astype(np.float32)
    params = {"embedding": jnp.asarray(table)}
    x = rng.standard_normal((rows, 1, 16)).astype(np.float32)
    laid = for_decoding({"embed": params}, tied_tables=[("embed",)])["embed"]
    got = np.asarray(embed.apply({"params": laid}, jnp.asarray(x), method=Embed.attend))
    want = x.astype(np.float64) @ table.T.astype(np.float64)
    assert got.shape == (rows, 1, 300)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    plain = np.asarray(embed.apply({"params": params}, jnp.asarray(x), method=Embed.attend))
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)
    # Laid out for steps of this many rows (no copy where they would not read it), and a
    # decoding step over plain params (the few-row form without any layout).
    for_rows = for_decoding({"embed": params}, tied_tables=[("embed",)], step_rows=[rows])
    decoding = Embed(300, cfg.replace(decode=True))
    for variables in ({"params": for_rows["embed"]}, {"params": params}):
        out = decoding.apply(variables, jnp.asarray(x), method=Embed.attend)
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-4)
    program = jax.make_jaxpr(lambda v, x: decoding.apply(v, x, method=Embed.attend))
    few = "optimization_barrier" in str(program({"params": params}, jnp.asarray(x)))
    assert few == (2 <= rows <= _FEW_ROWS)  # the few-row form, where it is the faster


@pytest.mark.parametrize("rows", [1, 2, 8, 32, 48])
def test_untied_logits_over_the_layout_match_float64(rows) -> None:
    """`OutputProjection` over params laid out for steps of `rows` rows: the [V, D] copy
    made and read exactly at 2-32 rows (as [V, D] times the rows), the logits those of
    NumPy in float64 at every row count."""
    from transformer_jax.nn.config import TransformerConfig
    from transformer_jax.nn.embed import _FEW_ROWS, TRANSPOSED_KERNEL, OutputProjection

    cfg = TransformerConfig(d_model=16, vocab_size=300, decode=True)
    head = OutputProjection(300, cfg)
    rng = np.random.default_rng(rows)
    kernel = rng.standard_normal((16, 300)).astype(np.float32)
    x = rng.standard_normal((rows, 1, 16)).astype(np.float32)
    laid = for_decoding(
        {"head": {"kernel": jnp.asarray(kernel)}}, untied_outputs=[("head",)], step_rows=[rows]
    )["head"]
    few = 2 <= rows <= _FEW_ROWS
    assert (TRANSPOSED_KERNEL in laid) == few
    if few:
        np.testing.assert_array_equal(np.asarray(laid[TRANSPOSED_KERNEL]), kernel.T)
    got = head.apply({"params": laid}, jnp.asarray(x))
    want = x.astype(np.float64) @ kernel.astype(np.float64)
    assert got.shape == (rows, 1, 300)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    program = jax.make_jaxpr(lambda v, x: head.apply(v, x))({"params": laid}, jnp.asarray(x))
    assert ("optimization_barrier" in str(program)) == few  # the copy is what is read
    if few:  # and it is read: a spoiled copy spoils the logits
        spoiled = dict(laid, **{TRANSPOSED_KERNEL: laid[TRANSPOSED_KERNEL] * 0})
        assert not np.any(np.asarray(head.apply({"params": spoiled}, jnp.asarray(x))))


def test_kept_layout_lays_out_again_for_an_untied_kernel_read_otherwise() -> None:
    from transformer_jax.nn.embed import TRANSPOSED_KERNEL

    calls = []

    def make(params, step_rows=None):
        calls.append(step_rows)
        return for_decoding(params, untied_outputs=[("head",)], step_rows=step_rows)

    kept = KeptLayout(make)
    params = dict(_params(0), head={"kernel": jnp.ones((8, 11))})
    one = kept(params, step_rows=[1])
    assert TRANSPOSED_KERNEL not in one["head"]
    both = kept(params, step_rows=[8])  # reads the copy: laid out again, for both
    assert TRANSPOSED_KERNEL in both["head"] and calls == [(1,), (1, 8)]
    assert _same_arrays(kept(params, step_rows=[1]), both) and len(calls) == 2
    assert _same_arrays(kept(params, step_rows=[16, 1]), both) and len(calls) == 2
    # New params start again from their own rows.
    other = jax.tree.map(jnp.array, params)
    assert TRANSPOSED_KERNEL not in kept(other, step_rows=[1])["head"] and len(calls) == 3
