"""Jitted source -> target decoding for encoder-decoder models over the KV cache."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from transformer_jax.decode.search import beam_search, greedy_search
from transformer_jax.models.translation import EncoderDecoder
from transformer_jax.nn.config import TransformerConfig


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "alpha", "max_decode_len"))
def translate_ids(
    params,
    inputs_BS,
    max_lengths_B,
    *,
    config: TransformerConfig,
    beam_size: int,
    alpha: float,
    max_decode_len: int,
):
    """Best hypothesis [B, max_decode_len] per source row (beam_size 1 = greedy).

    `max_lengths_B` caps each row's output (the paper: input length + 50).
    """
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
        )
    seqs_BKL, _ = beam_search(
        tokens_to_logits,
        cache,
        batch_size=B,
        beam_size=beam_size,
        alpha=alpha,
        max_decode_len=max_decode_len,
        start_id=config.decoder_start_id,
        eos_id=config.eos_id,
        max_lengths=max_lengths_B,
    )
    return seqs_BKL[:, 0, :]


def output_limits(src_lengths, extra_length: int, max_decode_len: int):
    """The paper's maximum output length: input length + extra, capped by the buffer."""
    return jnp.minimum(jnp.asarray(src_lengths, jnp.int32) + extra_length, max_decode_len)
