"""Attention views of an encoder (classification and masked-LM runs): bidirectional
self-attention over the text's tokens, [CLS] and [SEP] included, in one forward pass."""

from __future__ import annotations

import numpy as np

from transformer_jax.train.attention_maps import (
    MAX_TOKENS,
    AttentionView,
    cap_note,
    collect_attention,
    inspection_config,
    self_attention_views,
    token_labels,
)


def encoder_attention(
    loaded, pipeline, text: str, max_tokens: int = MAX_TOKENS
) -> list[AttentionView]:
    """Every layer's self-attention over `text` as `pipeline` encodes it (at most
    `max_tokens` tokens, the first ones kept)."""
    from transformer_jax.tasks.classification.model import TextEncoderModel

    [ids] = pipeline.encode([text], warn=False)
    ids = [int(t) for t in ids]
    note = cap_note("input", len(ids), max_tokens)
    ids = ids[:max_tokens]
    model = TextEncoderModel(inspection_config(loaded.model_config))
    ids_BT = np.asarray([ids], np.int32)
    # Every token is real (segment 1), even one that equals the pad id.
    weights = collect_attention(model, loaded.params, ids_BT, None, np.ones_like(ids_BT))
    tokens = token_labels(loaded.processors["tokenizer"], ids)
    return self_attention_views(weights, tokens, note)
