"""Unigram and bigram baselines for a causal LM's perplexity, fitted on token ids.

Each document is scored as the LM scores it: the sequence is ``[bos] + ids + [eos]``
and the predicted tokens are everything after ``bos`` (the ids and ``eos``), each
from the token before it. Perplexity is ``exp`` of the mean negative log
probability over all predicted tokens of all documents (token-level, as the LM's).

- Unigram: add-one (Laplace) smoothing over the whole vocabulary,
  ``p(w) = (c(w) + 1) / (N + V)``.
- Bigram: interpolated absolute discounting (Ney et al. 1994) with the unigram as
  the lower order,
  ``p(w | v) = max(c(v, w) - D, 0) / c(v) + D * T(v) / c(v) * p_uni(w)``,
  where ``c(v)`` counts ``v`` as a context and ``T(v)`` the distinct tokens seen after
  it; a context never seen in training falls back to ``p_uni``. The discount is
  ``D = n1 / (n1 + 2 n2)`` (``n1``, ``n2``: the numbers of bigram types seen once and
  twice), clipped to [0.1, 0.9] so that degenerate (tiny) corpora stay well defined.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from transformer_jax.data.tokenizer import BOS_ID, EOS_ID
from transformer_jax.tasks.generation.text import lm_specials

MIN_DISCOUNT, MAX_DISCOUNT = 0.1, 0.9


def _transitions(
    docs_ids: Iterable[Sequence[int]], bos_id: int, eos_id: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, predicted token) int64 arrays over all documents."""
    docs = [np.asarray(ids, np.int64).reshape(-1) for ids in docs_ids]
    if not docs:
        raise ValueError("No documents to fit or score the n-gram baselines on.")
    lengths = np.asarray([len(d) + 2 for d in docs], np.int64)
    flat = np.empty(int(lengths.sum()), np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = starts + lengths - 1
    body = np.ones(len(flat), bool)
    body[starts] = body[ends] = False
    flat[starts], flat[ends] = bos_id, eos_id
    flat[body] = np.concatenate(docs)
    if flat.min() < 0 or flat.max() >= vocab_size:
        raise ValueError(
            f"Token ids must lie in [0, {vocab_size}); found {flat.min()}..{flat.max()}."
        )
    predicted = np.ones(len(flat), bool)
    predicted[starts] = False
    targets = np.flatnonzero(predicted)
    return flat[targets - 1], flat[targets]


def bigram_discount(bigram_counts: np.ndarray) -> float:
    """The absolute discount ``n1 / (n1 + 2 n2)`` of the counts of the seen bigram types, clipped."""
    n1 = int(np.sum(bigram_counts == 1))
    n2 = int(np.sum(bigram_counts == 2))
    d = n1 / (n1 + 2 * n2) if n1 + n2 else MIN_DISCOUNT
    return float(np.clip(d, MIN_DISCOUNT, MAX_DISCOUNT))


def ngram_perplexities(
    train_docs_ids: Iterable[Sequence[int]],
    eval_docs_ids: Iterable[Sequence[int]],
    vocab_size: int,
    *,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> dict[str, float]:
    """Perplexities of ``eval_docs_ids`` under unigram and bigram models fitted on ``train_docs_ids``.

    Documents are lists of token ids without specials; see the module docstring
    for the models. Returns ``{"unigram": ppl, "bigram": ppl}``.
    """
    v = int(vocab_size)
    prev, nxt = _transitions(train_docs_ids, bos_id, eos_id, v)
    unigram = (np.bincount(nxt, minlength=v).astype(np.float64) + 1.0) / (len(nxt) + v)

    keys, counts = np.unique(prev * v + nxt, return_counts=True)
    context_counts = np.bincount(prev, minlength=v).astype(np.float64)
    types_after = np.bincount(keys // v, minlength=v).astype(np.float64)
    d = bigram_discount(counts)

    eval_prev, eval_next = _transitions(eval_docs_ids, bos_id, eos_id, v)
    eval_keys = eval_prev * v + eval_next
    at = np.minimum(np.searchsorted(keys, eval_keys), len(keys) - 1)
    pair_counts = np.where(keys[at] == eval_keys, counts[at], 0).astype(np.float64)
    c_v = context_counts[eval_prev]
    p_uni = unigram[eval_next]
    safe_c_v = np.maximum(c_v, 1.0)
    p_bi = np.where(
        c_v > 0,
        (np.maximum(pair_counts - d, 0.0) + d * types_after[eval_prev] * p_uni) / safe_c_v,
        p_uni,
    )
    return {
        "unigram": float(np.exp(-np.mean(np.log(p_uni)))),
        "bigram": float(np.exp(-np.mean(np.log(p_bi)))),
    }


def baseline_perplexities(
    tokenizer: Any, train_texts: Iterable[str], eval_texts: Iterable[str]
) -> dict[str, float]:
    """:func:`ngram_perplexities` of texts encoded by ``tokenizer`` (with its own bos/eos ids)."""
    specials = lm_specials(tokenizer)
    return ngram_perplexities(
        [tokenizer.encode(t) for t in train_texts],
        [tokenizer.encode(t) for t in eval_texts],
        tokenizer.vocab_size,
        bos_id=specials.bos_id,
        eos_id=specials.eos_id,
    )
