"""Attention views of a decoder-only model: causal self-attention over a prompt followed
by a few of the model's own greedy tokens, from one forward pass over them."""

from __future__ import annotations

import numpy as np

from transformer_jax.train.attention_maps import (
    GENERATED_TOKENS,
    MAX_TOKENS,
    AttentionView,
    cap_note,
    collect_attention,
    inspection_config,
    self_attention_views,
    token_labels,
)


def lm_attention(loaded, text: str, max_tokens: int = MAX_TOKENS) -> list[AttentionView]:
    """Every layer's self-attention over `text`'s tokens and up to GENERATED_TOKENS greedy ones."""
    from transformer_jax.nn.lm import CausalLM
    from transformer_jax.tasks.generation.pipeline import TextGenerationPipeline

    cfg = loaded.model_config
    prompt = TextGenerationPipeline.from_loaded(loaded).encode(text)
    note = cap_note("prompt", len(prompt), max_tokens)
    prompt = prompt[: min(max_tokens, cfg.max_position)]
    room = min(GENERATED_TOKENS, max_tokens - len(prompt), cfg.max_position - len(prompt))
    new: list[int] = []
    if room > 0:
        pipe = TextGenerationPipeline.from_loaded(
            loaded,
            max_new_tokens=room,
            temperature=0.0,
            num_beams=1,
            num_return_sequences=1,
            batch_size=1,
        )
        new = [int(t) for t in pipe.generate_ids([prompt])[0][0]]
    ids = prompt + new
    model = CausalLM(inspection_config(cfg))
    ids_BT = np.asarray([ids], np.int32)
    # Every token is real (segment 1), even a generated one that equals the pad id.
    weights = collect_attention(model, loaded.params, ids_BT, np.ones_like(ids_BT))
    tokens = token_labels(loaded.processors["tokenizer"], ids)
    if new:
        note = "; ".join(filter(None, [note, f"the last {len(new)} tokens are generated"]))
    return self_attention_views(weights, tokens, note)
