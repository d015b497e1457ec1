"""Jitted source -> target decoding for encoder-decoder models over the KV cache."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from transformer_jax.decode.cached import MODEL_BEAM_CACHE
from transformer_jax.decode.search import beam_search, greedy_search
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.layout import KeptLayout
from transformer_jax.nn.lm import decoding_params
from transformer_jax.tasks.translation.model import EncoderDecoder


def translate_ids(params, inputs_BS, max_lengths_B, *, config: TransformerConfig, **settings):
    """Best hypothesis [B, max_decode_len] per source row (beam_size 1 = greedy).

    Settings (keywords): `beam_size`, `alpha`, `max_decode_len`, and optionally
    `length_penalty_type`, `length_penalty`, `early_stopping`, `forced_eos`, `banned_ids`.
    `max_lengths_B` caps each row's output (the paper: input length + 50). Beam scoring:
    `length_penalty_type` "gnmt" uses `alpha` (the paper's penalty), "hf" uses
    `length_penalty` and `early_stopping` as Hugging Face's `generate()` does. With
    `forced_eos` a row's last allowed token is eos; `banned_ids` are never generated.

    The weights are first laid out for decoding, outside the decoding program, where
    they live on the CPU (`nn.layout.for_decoding`): joined q/k/v kernels and, where the
    steps' rows (batch x beams) read it, a tied output table as [D, V] or an untied
    kernel as [V, D]. Laying them out costs about as much as it saves over one
    call, so the copies made for the last parameters seen are kept for the next call
    with the same parameter arrays, and released with those parameters (they are not
    held here).
    """
    rows = inputs_BS.shape[0] * settings.get("beam_size", 1)
    params = _DECODING_LAYOUT(params, config, step_rows=[rows])
    return _translate_ids(params, inputs_BS, max_lengths_B, config=config, **settings)


def _lay_out(params, config: TransformerConfig, step_rows=None):
    table = "embed" if config.share_embeddings else "target_embed"
    return decoding_params(config, params, step_rows, table=table)


_DECODING_LAYOUT = KeptLayout(_lay_out)


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "beam_size",
        "alpha",
        "max_decode_len",
        "length_penalty_type",
        "length_penalty",
        "early_stopping",
        "forced_eos",
        "banned_ids",
    ),
)
def _translate_ids(
    params,
    inputs_BS,
    max_lengths_B,
    *,
    config: TransformerConfig,
    beam_size: int,
    alpha: float,
    max_decode_len: int,
    length_penalty_type: str = "gnmt",
    length_penalty: float = 1.0,
    early_stopping: str = "false",
    forced_eos: bool = False,
    banned_ids: tuple[int, ...] = (),
):
    model = EncoderDecoder(config.replace(decode=True, deterministic=True))
    B = inputs_BS.shape[0]
    _, variables = model.apply(
        {"params": params},
        inputs_BS,
        max_decode_len,
        method=EncoderDecoder.init_cache,
        mutable=["cache"],
    )
    cache = variables["cache"]

    def tokens_to_logits(ids_B1, cache):
        logits_BV, new_vars = model.apply(
            {"params": params, "cache": cache},
            ids_B1,
            method=EncoderDecoder.decode_step,
            mutable=["cache"],
        )
        return logits_BV, new_vars["cache"]

    if beam_size == 1:
        return greedy_search(
            tokens_to_logits,
            cache,
            batch_size=B,
            max_decode_len=max_decode_len,
            start_id=config.decoder_start_id,
            eos_id=config.eos_id,
            max_lengths=max_lengths_B,
            forced_eos=forced_eos,
            banned_ids=banned_ids,
        )
    seqs_BKL, _ = beam_search(
        tokens_to_logits,
        cache,
        batch_size=B,
        beam_size=beam_size,
        alpha=length_penalty if length_penalty_type == "hf" else alpha,
        max_decode_len=max_decode_len,
        start_id=config.decoder_start_id,
        eos_id=config.eos_id,
        max_lengths=max_lengths_B,
        length_penalty_type=length_penalty_type,
        early_stopping=early_stopping,
        forced_eos=forced_eos,
        banned_ids=banned_ids,
        beam_cache=MODEL_BEAM_CACHE,
    )
    return seqs_BKL[:, 0, :]


def output_limits(src_lengths, extra_length: int, max_decode_len: int):
    """The paper's maximum output length: input length + extra, capped by the buffer."""
    return jnp.minimum(jnp.asarray(src_lengths, jnp.int32) + extra_length, max_decode_len)


def translate_rows(
    params, inputs_BS, max_lengths_B, *, rows_sharding: NamedSharding | None = None, **settings
) -> np.ndarray:
    """`translate_ids` from host arrays to host ids [B, max_decode_len].

    With `rows_sharding` (a sharding of the row dimension over a mesh) the rows
    are split over the mesh's devices, those of every host: each host places
    and decodes only its own rows, then all rows are gathered so that every
    host returns all of them. Under several processes every host must call
    this with the same arrays, in the same order as the other hosts.
    """
    if rows_sharding is None:
        return np.asarray(translate_ids(params, inputs_BS, max_lengths_B, **settings))
    inputs_BS, max_lengths_B = (
        # Each host reads only the slices of its own devices from the full host array.
        jax.make_array_from_callback(x.shape, rows_sharding, lambda index, x=x: x[index])
        for x in (np.asarray(inputs_BS), np.asarray(max_lengths_B))
    )
    ids_BL = translate_ids(params, inputs_BS, max_lengths_B, **settings)
    if not (ids_BL.is_fully_addressable or ids_BL.is_fully_replicated):
        # Rows decoded on other hosts cannot be fetched: an all-gather replicates them.
        replicated = NamedSharding(rows_sharding.mesh, PartitionSpec())
        ids_BL = jax.jit(_identity, out_shardings=replicated)(ids_BL)
    return np.asarray(ids_BL)


def _identity(x):
    return x
