"""Batched, jitted text generation with a causal LM over a preallocated KV cache.

`Generator(config, params)` continues token-id prompts. Each call groups the prompts into
batches; one jitted program per (batch size, prompt bucket, total length, static options)
prefills a whole batch in one call, then runs a `lax.while_loop` over the cache
(`decode.cached.generate` / `beam_generate`). Prompt lengths are bucketed (powers of two
from 16, capped at the context) and batch sizes padded to powers of two (capped at
`batch_size`), so a new prompt length or count within a bucket reuses a compiled program.

A sampled row draws from its own key, `fold_in(fold_in(key(seed), copy), step)`: the same
prompt and seed give the same continuation whatever else shares its batch. A prompt longer
than the context leaves room for `max_new_tokens` by keeping its last tokens (one warning
on stderr), or raises with `truncation="error"`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.decode import cached
from transformer_jax.decode.search import LENGTH_PENALTY_TYPES
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.layout import KeptLayout
from transformer_jax.nn.lm import CausalLM, cached_decoding_fns, decoding_params
from transformer_jax.train.metrics import report
from transformer_jax.train.task import InputError

MIN_BUCKET = 16
PADDING_SIDES = ("left", "right")
TRUNCATIONS = ("left", "error")
MAX_SEED = 2**31

__all__ = ["GenerateOptions", "Generator", "prompt_bucket"]


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """Decoding options; `temperature` 0 is greedy, `num_beams` > 1 is beam search."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    length_penalty_type: str = "hf"  # "hf": logp / len**p (transformers); "gnmt": Wu et al.
    num_return_sequences: int = 1
    seed: int = 0
    truncation: str = "left"

    def validate(self) -> None:
        """One-line `InputError` for the first bad option."""

        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("max_new_tokens", "top_k", "num_beams", "num_return_sequences", "seed"):
            value = getattr(self, name)
            need(isinstance(value, int | np.integer) and not isinstance(value, bool), name,
                 "must be an int")  # fmt: skip
        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            need(isinstance(value, int | float | np.number) and np.isfinite(value), name,
                 "must be a finite number")  # fmt: skip
        need(self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")
        need(self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)")
        need(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 = off)")
        need(self.num_beams >= 1, "num_beams", "must be >= 1")
        need(self.num_return_sequences >= 1, "num_return_sequences", "must be >= 1")
        need(0 <= self.seed < MAX_SEED, "seed", f"must be in [0, {MAX_SEED})")
        need(
            self.length_penalty_type in LENGTH_PENALTY_TYPES,
            "length_penalty_type",
            f"choose one of {', '.join(LENGTH_PENALTY_TYPES)}",
        )
        need(self.truncation in TRUNCATIONS, "truncation", f"choose one of {TRUNCATIONS}")
        if self.num_beams > 1:
            need(
                self.num_return_sequences <= self.num_beams,
                "num_return_sequences",
                f"must be <= num_beams={self.num_beams} with beam search",
            )
            need(
                self.temperature == 0,
                "temperature",
                f"beam search (num_beams={self.num_beams}) does not sample: use 0",
            )


def prompt_bucket(length: int, context: int) -> int:
    """The padded prompt length: a power of two from `MIN_BUCKET`, capped at `context`."""
    bucket = MIN_BUCKET
    while bucket < length:
        bucket *= 2
    return max(length, min(bucket, context))


def _batch_bucket(rows: int, batch_size: int) -> int:
    size = 1
    while size < rows:
        size *= 2
    return min(size, max(batch_size, rows))


@dataclasses.dataclass(frozen=True)
class _Program:
    """The static part of one compiled decoding program."""

    batch: int
    prompt_len: int
    max_new_tokens: int
    sampling: bool
    top_k: int
    top_p: bool  # top_p < 1 (else no top-p filtering is traced)
    num_beams: int
    length_penalty: float
    length_penalty_type: str
    penalize: bool  # repetition_penalty != 1


class Generator:
    """Continues token-id prompts with a `CausalLM` of `config` and `params`.

    `config.decoder_start_id` is the bos token (an empty prompt becomes `[bos]`),
    `config.eos_id` ends a row, `config.max_position` is the context. `batch_size` caps
    the rows of one program (prompts times returned sequences; prompts times beams).
    """

    def __init__(
        self,
        config: TransformerConfig,
        params: Any,
        *,
        batch_size: int = 16,
        padding_side: str = "left",
    ) -> None:
        if padding_side not in PADDING_SIDES:
            raise InputError(f"padding_side={padding_side!r}: choose one of {PADDING_SIDES}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size={batch_size!r}: must be an int >= 1")
        self.config = config
        self.params = params
        self.batch_size = batch_size
        self.padding_side = padding_side
        self.traces = 0  # programs traced (= compiled) so far, for tests and logs
        self._fns = cached_decoding_fns(CausalLM(config))
        self._programs: dict[_Program, Any] = {}
        # The layout of the last params decoded with.
        self._layout = KeptLayout(
            lambda params, config, step_rows: decoding_params(config, params, step_rows)
        )

    # ---- prompts ---------------------------------------------------------------------------

    def fit_prompts(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, truncation: str = "left"
    ) -> list[list[int]]:
        """Prompts as id lists that fit the context with `max_new_tokens` more tokens."""
        context = self.config.max_position
        room = context - max_new_tokens
        out, truncated = [], 0
        for ids in prompts:
            ids = [int(i) for i in ids] or [self.config.decoder_start_id]
            bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
            if bad:
                raise InputError(
                    f"prompt token id {bad[0]} is outside the vocabulary "
                    f"(0..{self.config.vocab_size - 1})"
                )
            if len(ids) > room:
                if truncation == "error" or room < 1:
                    raise InputError(
                        f"a prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} "
                        f"exceeds the model's context of max_position={context}"
                    )
                ids, truncated = ids[-room:], truncated + 1
            out.append(ids)
        if truncated:
            print(
                f"warning: {truncated} prompt(s) longer than {room} tokens (max_position="
                f"{context} - max_new_tokens={max_new_tokens}) keep only their last {room}",
                file=sys.stderr,
            )
        return out

    # ---- generation --------------------------------------------------------------------------

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        options: GenerateOptions | None = None,
        *,
        seeds: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> list[list[list[int]]]:
        """For each prompt, `num_return_sequences` continuations (new token ids only).

        A continuation ends with `eos_id` where the model produced it. Options come as a
        `GenerateOptions` or as its fields in `kwargs`; `seeds` (one per prompt) replace
        `options.seed` for sampling.
        """
        options = dataclasses.replace(options or GenerateOptions(), **kwargs)
        options.validate()
        prompts = self.fit_prompts(prompts, options.max_new_tokens, options.truncation)
        n = options.num_return_sequences
        if seeds is None:
            seeds = [options.seed] * len(prompts)
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(prompts) or any(not 0 <= s < MAX_SEED for s in seeds):
            raise InputError(f"seeds: give {len(prompts)} ints in [0, {MAX_SEED})")
        results: list[list[list[int]]] = [[] for _ in prompts]
        if options.max_new_tokens == 0:
            return [[[] for _ in range(n)] for _ in prompts]
        beams = options.num_beams > 1
        # Rows: one per prompt (beam search returns n beams) or one per returned sample.
        rows = [(i, 0) for i in range(len(prompts))]
        if not beams:
            rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
        rows.sort(key=lambda r: len(prompts[r[0]]))  # batches of similar lengths
        per_batch = max(1, self.batch_size // options.num_beams) if beams else self.batch_size
        starts = range(0, len(rows), per_batch)
        step_rows = [
            _batch_bucket(len(rows[s : s + per_batch]), per_batch) * options.num_beams
            for s in starts
        ]
        params = self._decoding_params(step_rows)
        report("generating", 0, len(rows))  # shown by an active Progress (evaluations)
        for start in starts:
            chunk = rows[start : start + per_batch]
            chunk_prompts = [prompts[i] for i, _ in chunk]
            out = self._run_batch(
                params, chunk_prompts, [seeds[i] for i, _ in chunk], [j for _, j in chunk], options
            )
            for (i, _), seqs in zip(chunk, out, strict=True):
                results[i].extend(seqs)
            report("generating", start + len(chunk), len(rows))
        return results

    def _run_batch(self, params, prompts, seeds, copies, options: GenerateOptions):
        cfg = self.config
        rows = len(prompts)
        beams = options.num_beams > 1
        limit = max(1, self.batch_size // options.num_beams) if beams else self.batch_size
        B = _batch_bucket(rows, limit)
        T = prompt_bucket(max(map(len, prompts)), cfg.max_position)
        ids = np.full((B, T), cfg.pad_id, np.int32)
        mask = np.zeros((B, T), np.int32)
        for b in range(B):
            p = prompts[b] if b < rows else [cfg.decoder_start_id]  # filler rows
            cols = slice(T - len(p), T) if self.padding_side == "left" else slice(0, len(p))
            ids[b, cols], mask[b, cols] = p, 1
        max_lengths = np.where(np.arange(B) < rows, options.max_new_tokens, 0).astype(np.int32)
        seeds_B = np.zeros((B,), np.int32)
        seeds_B[:rows] = seeds
        copies_B = np.zeros((B,), np.int32)
        copies_B[:rows] = copies
        program = _Program(
            batch=B,
            prompt_len=T,
            max_new_tokens=options.max_new_tokens,
            sampling=options.temperature > 0,
            top_k=min(options.top_k, cfg.vocab_size) if options.temperature > 0 else 0,
            top_p=options.temperature > 0 and options.top_p < 1.0,
            num_beams=options.num_beams,
            length_penalty=float(options.length_penalty) if beams else 0.0,
            length_penalty_type=options.length_penalty_type if beams else "hf",
            penalize=options.repetition_penalty != 1.0,
        )
        fn = self._program(program)
        seqs = fn(
            params,
            jnp.asarray(ids),
            jnp.asarray(mask),
            jnp.asarray(max_lengths),
            jnp.asarray(seeds_B),
            jnp.asarray(copies_B),
            jnp.float32(options.temperature),
            jnp.float32(options.top_p),
            jnp.float32(options.repetition_penalty),
        )
        # int32[B, n, max_new_tokens]: n = 1, or the beams of which the best are returned.
        seqs = np.asarray(seqs)[:, : options.num_return_sequences]
        return [[self._cut(s) for s in seqs[b]] for b in range(rows)]

    def _decoding_params(self, step_rows=None):
        """`self.params` laid out for decoding batches of `step_rows` rows each (batch x
        beams; `nn.lm.decoding_params`), made once and kept until `self.params` is
        replaced."""
        return self._layout(self.params, self.config, step_rows=step_rows)

    def _cut(self, seq: np.ndarray) -> list[int]:
        """Tokens up to and including the first eos (the rest is padding)."""
        hits = np.flatnonzero(seq == self.config.eos_id)
        end = int(hits[0]) + 1 if hits.size else len(seq)
        return [int(t) for t in seq[:end]]

    def _program(self, p: _Program):
        if p in self._programs:
            return self._programs[p]
        _, prefill, step = self._fns
        init_cache = self._fns[0]
        eos_id = self.config.eos_id

        def run(params, ids, mask, max_lengths, seeds, copies, temperature, top_p, penalty):
            self.traces += 1  # runs only while tracing: counts compilations
            cache = init_cache(params, p.batch, p.prompt_len + p.max_new_tokens - 1)
            penalty = penalty if p.penalize else 1.0
            common = dict(max_new_tokens=p.max_new_tokens, eos_id=eos_id, max_lengths=max_lengths)
            if p.num_beams > 1:
                seqs, _ = cached.beam_generate(
                    prefill,
                    step,
                    params,
                    cache,
                    ids,
                    mask,
                    beam_size=p.num_beams,
                    alpha=p.length_penalty,
                    length_penalty_type=p.length_penalty_type,
                    repetition_penalty=penalty,
                    **common,
                )
                return seqs  # all beams, best first
            rng = None
            if p.sampling:
                # One key per row from its own seed and copy index: independent of the batch.
                rng = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(seeds, copies)
            seqs = cached.generate(
                prefill,
                step,
                params,
                cache,
                ids,
                mask,
                temperature=temperature if p.sampling else 0.0,
                top_k=p.top_k,
                top_p=top_p if p.top_p else 1.0,
                rng=rng,
                repetition_penalty=penalty,
                **common,
            )
            return seqs[:, None]

        self._programs[p] = jax.jit(run)
        return self._programs[p]
