"""Token embeddings (shareable, tied to the output projection), token types, positions."""

from __future__ import annotations

from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.positions import sinusoid_table

__all__ = [
    "Embed",
    "TokenTypeEmbed",
    "add_positions",
    "output_projection",
    "OutputProjection",
    "output_layouts",
    "sinusoid_table",
]


# Decoding copies of an output matrix, transposed beside it (`with_transposed`): a tied
# table's [D, V] beside its "embedding" [V, D], which `Embed.attend` reads, and an untied
# projection's [V, D] beside its "kernel" [D, V], which `OutputProjection` reads.
TRANSPOSED_TABLE = "embedding_DV"
TRANSPOSED_KERNEL = "kernel_VD"


def with_transposed(params, path: tuple[str, ...], name: str, copy: str, dtype=None):
    """`params` with the array `name` of the module at `path` also transposed (and cast to
    `dtype`, if given), under `copy` beside it. Made outside the decoding program
    (`nn.layout.for_decoding`), where the module reads it."""
    out = dict(params)
    node = out
    for key in path:
        node[key] = dict(node[key])
        node = node[key]
    node[copy] = jnp.asarray(node[name], dtype).T
    return out


class Embed(nn.Module):
    """A [vocab, d_model] table; `attend` gives the tied pre-softmax logits."""

    num_embeddings: int
    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        init = nn.initializers.normal(stddev=cfg.d_model**-0.5)
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(init, ("vocab", "embed")),
            (self.num_embeddings, cfg.d_model),
            cfg.param_dtype,
        )

    def __call__(self, ids_BL: jax.Array) -> jax.Array:
        table_VD = jnp.asarray(self.embedding, self.config.dtype)
        return jnp.take(table_VD, ids_BL, axis=0)

    def attend(self, x_BLD: jax.Array) -> jax.Array:
        """Logits against the table. A decoding step on a CPU (`config.decode`, or params
        laid out for decoding with the table transposed beside it, `TRANSPOSED_TABLE`)
        multiplies 2 to `_FEW_ROWS` rows by the table itself as `_few_rows_logits` does,
        unless the table would first need a cast to the compute dtype; other row counts,
        and that cast, read the [D, V] copy where the params hold it
        (`output_layouts`)."""
        cfg = self.config
        tokens = x_BLD.size // x_BLD.shape[-1]
        laid = self.has_variable("params", TRANSPOSED_TABLE)
        if (
            (laid or (cfg.decode and jax.default_backend() == "cpu"))
            and _few(tokens)
            and self.embedding.dtype == cfg.dtype
        ):
            return _few_rows_logits(x_BLD, self.embedding)
        if laid:
            table_DV = self.get_variable("params", TRANSPOSED_TABLE)
            return jnp.einsum("bld,dv->blv", x_BLD, jnp.asarray(table_DV, cfg.dtype))
        table_VD = jnp.asarray(self.embedding, cfg.dtype)
        if jax.default_backend() == "cpu" and tokens >= 2 * table_VD.shape[1]:
            return _tied_logits(x_BLD, table_VD)
        return jnp.einsum("bld,vd->blv", x_BLD, table_VD)


# From 2 up to this many rows, a decoding step's logits are computed as [V, rows] from
# the output matrix as [V, D] (a tied table itself, an untied kernel's copy:
# `_few_rows_logits`); one row, or more than this, multiply the matrix as [D, V].
_FEW_ROWS = 32


def _few(rows: int) -> bool:
    return 2 <= rows <= _FEW_ROWS


def output_layouts(rows: Iterable[int] | None) -> frozenset[str]:
    """The layouts of the output matrix that decoding steps multiplying these row counts
    (batch x beams; None: unknown, so both) read on a CPU: "VD" for 2 to `_FEW_ROWS`
    rows (the matrix as [V, D] times the rows, `_few_rows_logits`), "DV" for one row or
    more than `_FEW_ROWS` (the rows times [D, V]). A tied table is [V, D], an untied kernel [D, V]: the
    other layout is a copy (`nn.layout.for_decoding`). A tied table not in the compute
    dtype is read as its [D, V] copy (cast once) at every row count."""
    if rows is None:
        return frozenset({"VD", "DV"})
    return frozenset("VD" if _few(r) else "DV" for r in rows)


class OutputProjection(nn.Module):
    """The untied pre-softmax projection [..., D] -> [..., V] by a kernel [D, V]. Where the
    params hold its [V, D] copy (`TRANSPOSED_KERNEL`, laid out for decoding on a CPU), 2
    to `_FEW_ROWS` rows are multiplied by that copy as `_few_rows_logits` does."""

    vocab_size: int
    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        cfg = self.config
        kernel_DV = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "vocab")),
            (x_BLD.shape[-1], self.vocab_size),
            cfg.param_dtype,
        )
        x_BLD = jnp.asarray(x_BLD, cfg.dtype)
        if _few(x_BLD.size // x_BLD.shape[-1]) and self.has_variable("params", TRANSPOSED_KERNEL):
            table_VD = self.get_variable("params", TRANSPOSED_KERNEL)
            return _few_rows_logits(x_BLD, jnp.asarray(table_VD, cfg.dtype))
        return jnp.einsum("...d,dv->...v", x_BLD, jnp.asarray(kernel_DV, cfg.dtype))


def _few_rows_logits(x_BLD: jax.Array, table_VD: jax.Array) -> jax.Array:
    """x [B, L, D] (2 to `_FEW_ROWS` rows in all) against the table [V, D]: logits [B, L, V]
    computed as table x rows -> [V, rows], then transposed. XLA's CPU dot (YNNPACK) packs
    its right-hand operand on every call: with the table on the left, it packs the few
    rows instead of the table. The optimization barrier keeps XLA from folding the
    transpose back into the dot (which would make it rows x table transposed, the slowest
    form). On a 2-core Zen 4, against rows x the [D, V] copy: at D 512, V 32,000, 3.6
    against 3.9 ms at 8 rows, 7.1 against 8.1 at 32; at D 768, V 50,257, 6.9 against 11.3
    ms at 8 rows, 14.2 against 18.0 at 32. At one row the copy is as fast or faster
    (1.4 against 2.0-2.5 ms at D 512), and from 48 rows on it is faster."""
    *lead, D = x_BLD.shape
    logits_VN = jax.lax.dot_general(table_VD, x_BLD.reshape(-1, D), (((1,), (1,)), ((), ())))
    return jax.lax.optimization_barrier(logits_VN).T.reshape(*lead, table_VD.shape[0])


@jax.custom_vjp
def _tied_logits(x_BLD: jax.Array, table_VD: jax.Array) -> jax.Array:
    """x [B, L, D] against the table [V, D]: logits [B, L, V], with the table's gradient
    computed transposed (for XLA on a CPU; the value and the gradients are the einsum's).

    The table's gradient contracts the tokens of the logits' gradient d [B, L, V] with x.
    Left to itself, XLA's CPU dot wants the contracted dimension of d last and writes d
    transposed ([V, B L], as large as the logits) for it. Multiplying x transposed ([D,
    B L], small) by d as laid out gives the gradient as [D, V], transposed back at the
    cost of one table; optimization barriers keep XLA from folding either transpose back
    into the matmul. This pays where the tokens outnumber the table's columns (d is then
    larger than the table): `Embed.attend` uses it from twice as many. On a 2-core Zen 4
    at 2,048 tokens x 8,192 words x 256: 44-50 ms for the gradient against 65-72 ms, and
    the train step at shape S (benchmarks/run.py) about 7% faster.
    """
    return jnp.einsum("bld,vd->blv", x_BLD, table_VD)


def _tied_logits_fwd(x_BLD, table_VD):
    return _tied_logits(x_BLD, table_VD), (x_BLD, table_VD)


def _tied_logits_bwd(res, d_BLV):
    x_BLD, table_VD = res
    dx_BLD = jnp.einsum("blv,vd->bld", d_BLV, table_VD)
    D, V = table_VD.shape[1], table_VD.shape[0]
    x_DN = jax.lax.optimization_barrier(x_BLD.reshape(-1, D).T)
    d_table_DV = jax.lax.optimization_barrier(x_DN @ d_BLV.reshape(-1, V))
    return dx_BLD, d_table_DV.T.astype(table_VD.dtype)


_tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


def output_projection(config: TransformerConfig, vocab_size: int) -> OutputProjection:
    """The untied pre-softmax projection ``[..., d_model] -> [..., vocab]`` (`logits_dense`)."""
    return OutputProjection(vocab_size, config, name="logits_dense")


class TokenTypeEmbed(nn.Module):
    """BERT's token-type (segment A/B) embeddings: ids ``[B, L]`` -> ``[B, L, d_model]``."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, type_ids_BL: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.num_token_types <= 0:
            raise ValueError("model.num_token_types=0: token-type embeddings need at least 1 type")
        table_TD = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed")),
            (cfg.num_token_types, cfg.d_model),
            cfg.param_dtype,
        )
        return jnp.take(jnp.asarray(table_TD, cfg.dtype), type_ids_BL, axis=0)


def add_positions(x_BLD: jax.Array, pos_BL: jax.Array, config: TransformerConfig) -> jax.Array:
    """Adds the fixed sinusoidal encoding at the given positions."""
    table_PD = jnp.asarray(
        sinusoid_table(config.max_position, config.d_model, config.position_layout), config.dtype
    )
    return x_BLD + jnp.take(table_PD, pos_BL, axis=0, mode="clip")
