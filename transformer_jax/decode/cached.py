"""Model-agnostic cached decoding: prefill a batch of prompts in one call, then step.

The model side supplies two callables (e.g. ``transformer_jax.nn.lm.cached_decoding_fns``):

    prefill(params, cache, tokens_BT, positions_BT, segment_ids_BT[, prefix_BT])
        -> (logits_BTV, cache)
    step(params, cache, tokens_B1, positions_B1) -> (logits_B1V, cache)

Both append their tokens to the cache, each with its own position; segment id 0 marks a
padded slot that no later token may attend to. Nothing here knows the model family.

Prompts come as one ``[B, T]`` array with a mask (nonzero = real token). Rows may be
left-padded (real tokens last), right-padded (real tokens first), or both: positions
count each row's real tokens only, so a row decodes exactly as its prompt alone would.
Every prompt needs at least one real token. The cache must hold ``T + max_new_tokens - 1``
slots per row (the last generated token is never fed back).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from transformer_jax.decode.search import BeamCache, beam_search, greedy_search
from transformer_jax.nn.attention import add_beam_rows, is_beam_read_cache

PyTree = Any
PrefillFn = Callable[..., tuple[jax.Array, PyTree]]
StepFn = Callable[[PyTree, PyTree, jax.Array, jax.Array], tuple[jax.Array, PyTree]]

# How the caches of this project's attention layers follow beam search: the encoder
# memory is never copied, and steps append keys and values to their own row and read
# them through an ancestry table (`nn.attention.add_beam_rows`), the only part gathered.
MODEL_BEAM_CACHE = BeamCache(not_gathered=is_beam_read_cache, expand=add_beam_rows)

__all__ = [
    "MODEL_BEAM_CACHE",
    "Prefilled",
    "PromptLayout",
    "beam_generate",
    "generate",
    "prefill_prompts",
    "prompt_layout",
    "prompt_tokens_seen",
]


class PromptLayout(NamedTuple):
    positions: jax.Array  # int32[B, T]: 0, 1, ... over each row's real tokens
    segment_ids: jax.Array  # int32[B, T]: 1 = real token, 0 = padding
    lengths: jax.Array  # int32[B]: real tokens per row (= the next position)
    last_index: jax.Array  # int32[B]: column of each row's last real token


class Prefilled(NamedTuple):
    logits: jax.Array  # float32[B, V]: next-token logits after each prompt
    cache: PyTree
    next_positions: jax.Array  # int32[B]


def prompt_layout(prompt_mask_BT: jax.Array) -> PromptLayout:
    """Positions, segment ids, lengths and last real column of padded prompts."""
    real_BT = jnp.asarray(prompt_mask_BT) != 0
    count_BT = jnp.cumsum(real_BT.astype(jnp.int32), axis=1)
    positions_BT = jnp.maximum(count_BT - 1, 0)
    T = real_BT.shape[1]
    columns_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), real_BT.shape)
    last_B = jnp.max(jnp.where(real_BT, columns_BT, 0), axis=1)
    return PromptLayout(positions_BT, real_BT.astype(jnp.int32), count_BT[:, -1], last_B)


def prompt_tokens_seen(prompts_BT: jax.Array, prompt_mask_BT: jax.Array, vocab: int):
    """bool[B, V]: the token ids in each row's real prompt tokens (padding excluded)."""
    prompts_BT = jnp.asarray(prompts_BT, jnp.int32)
    real_BT = jnp.asarray(prompt_mask_BT) != 0
    rows_B1 = jnp.arange(prompts_BT.shape[0])[:, None]
    return jnp.zeros((prompts_BT.shape[0], vocab), bool).at[rows_B1, prompts_BT].max(real_BT)


def _seen(repetition_penalty, prompts_BT, prompt_mask_BT, first: Prefilled):
    if isinstance(repetition_penalty, int | float) and repetition_penalty == 1.0:
        return None  # static no-op: nothing to build
    return prompt_tokens_seen(prompts_BT, prompt_mask_BT, first.logits.shape[-1])


def _takes_logits_index(prefill: PrefillFn) -> bool:
    try:
        return "logits_index_B" in inspect.signature(prefill).parameters
    except (TypeError, ValueError):
        return False


def prefill_prompts(
    prefill: PrefillFn,
    params: PyTree,
    cache: PyTree,
    prompts_BT: jax.Array,
    prompt_mask_BT: jax.Array,
    *,
    prefix_lengths: jax.Array | None = None,
) -> Prefilled:
    """Runs every prompt through the model in one call.

    ``prefix_lengths`` (``int[B]``, prefix-LM) makes each row's first real tokens attend
    bidirectionally; the prefill callable then receives ``prefix_BT`` as well. A prefill
    callable with a keyword ``logits_index_B`` gets each row's last real column there and
    returns logits ``[B, 1, V]`` of those tokens only (no output projection of the rest).
    """
    layout = prompt_layout(prompt_mask_BT)
    extra = ()
    if prefix_lengths is not None:
        prefix_B1 = jnp.asarray(prefix_lengths, jnp.int32).reshape(-1, 1)
        extra = ((layout.positions < prefix_B1) & (layout.segment_ids != 0),)
    last_only = _takes_logits_index(prefill)
    kwargs = {"logits_index_B": layout.last_index} if last_only else {}
    logits_BTV, cache = prefill(
        params, cache, prompts_BT, layout.positions, layout.segment_ids, *extra, **kwargs
    )
    if last_only:
        logits_BV = logits_BTV[:, 0, :]
    else:
        last_B11 = layout.last_index[:, None, None]
        logits_BV = jnp.take_along_axis(logits_BTV, last_B11, axis=1)[:, 0, :]
    return Prefilled(logits_BV.astype(jnp.float32), cache, layout.lengths)


def generate(
    prefill: PrefillFn,
    step: StepFn,
    params: PyTree,
    cache: PyTree,
    prompts_BT: jax.Array,
    prompt_mask_BT: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    max_lengths: jax.Array | None = None,
    temperature: float | jax.Array = 0.0,
    top_k: int = 0,
    top_p: float | jax.Array = 1.0,
    rng: jax.Array | None = None,
    prefix_lengths: jax.Array | None = None,
    forced_eos: bool = False,
    banned_ids: Sequence[int] = (),
    repetition_penalty: float | jax.Array = 1.0,
) -> jax.Array:
    """Continuations ``int32[B, max_new_tokens]`` of padded prompts: greedy or sampled.

    Greedy at ``temperature`` 0, else sampling with ``top_k``/``top_p`` (needs ``rng``: one
    key, or ``key[B]`` for per-row samples independent of the other rows).
    ``repetition_penalty`` counts each row's prompt tokens and its generated ones.
    Rows end after ``eos_id`` (kept) or ``max_lengths[b]`` tokens, then hold
    ``search.PAD_ID``. Jittable with the callables and static options closed over.
    """
    first = prefill_prompts(
        prefill, params, cache, prompts_BT, prompt_mask_BT, prefix_lengths=prefix_lengths
    )
    tokens_to_logits, state = _stepper(step, params, first)
    return greedy_search(
        tokens_to_logits,
        state,
        batch_size=prompts_BT.shape[0],
        max_decode_len=max_new_tokens,
        start_id=0,  # unused: the first token comes from the prefill logits
        eos_id=eos_id,
        max_lengths=max_lengths,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=rng,
        forced_eos=forced_eos,
        banned_ids=banned_ids,
        initial_logits=first.logits,
        repetition_penalty=repetition_penalty,
        seen=_seen(repetition_penalty, prompts_BT, prompt_mask_BT, first),
    )


def beam_generate(
    prefill: PrefillFn,
    step: StepFn,
    params: PyTree,
    cache: PyTree,
    prompts_BT: jax.Array,
    prompt_mask_BT: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    length_penalty_type: str = "gnmt",
    early_stopping: str = "false",
    max_lengths: jax.Array | None = None,
    prefix_lengths: jax.Array | None = None,
    forced_eos: bool = False,
    banned_ids: Sequence[int] = (),
    repetition_penalty: float | jax.Array = 1.0,
    beam_cache: BeamCache | None = MODEL_BEAM_CACHE,
) -> tuple[jax.Array, jax.Array]:
    """Beam search over padded prompts: ``(int32[B, K, max_new_tokens], float32[B, K])``.

    The prompts are prefilled once (batch ``B``), then the cache is copied to the beams;
    scoring options are those of ``search.beam_search``. ``beam_cache`` says how the cache
    follows the beams: by default as this project's attention layers lay it out (keys and
    values never copied between beams, `MODEL_BEAM_CACHE`); ``None`` copies every leaf from
    its source beam after each step, which any step function accepts.
    """
    first = prefill_prompts(
        prefill, params, cache, prompts_BT, prompt_mask_BT, prefix_lengths=prefix_lengths
    )
    tokens_to_logits, state = _stepper(step, params, first)
    return beam_search(
        tokens_to_logits,
        state,
        batch_size=prompts_BT.shape[0],
        beam_size=beam_size,
        alpha=alpha,
        max_decode_len=max_new_tokens,
        start_id=0,  # unused: the first tokens come from the prefill logits
        eos_id=eos_id,
        max_lengths=max_lengths,
        length_penalty_type=length_penalty_type,
        early_stopping=early_stopping,
        forced_eos=forced_eos,
        banned_ids=banned_ids,
        initial_logits=first.logits,
        repetition_penalty=repetition_penalty,
        seen=_seen(repetition_penalty, prompts_BT, prompt_mask_BT, first),
        beam_cache=beam_cache,
    )


def _stepper(step: StepFn, params: PyTree, first: Prefilled):
    """A ``search`` step function over ``{"cache", "positions"}`` and its initial state."""

    def tokens_to_logits(ids_B1: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        positions_B = state["positions"]
        logits, model_cache = step(params, state["cache"], ids_B1, positions_B[:, None])
        return logits, {"cache": model_cache, "positions": positions_B + 1}

    return tokens_to_logits, {"cache": first.cache, "positions": first.next_positions}
