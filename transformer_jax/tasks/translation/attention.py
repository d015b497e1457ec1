"""Attention views of a translation: the model's own greedy translation of a sentence,
then one teacher-forced forward pass over it that collects every layer's weights.

Views per layer: encoder self-attention (source x source), decoder self-attention
(rows: the target token each position predicts; columns: the decoder's inputs, which
start with the start token) and encoder-decoder attention (predicted target x source).
"""

from __future__ import annotations

import numpy as np

from transformer_jax.train.attention_maps import (
    MAX_TOKENS,
    AttentionView,
    cap_note,
    collect_attention,
    inspection_config,
    layer_of,
    token_labels,
)

_KINDS = {
    ("encoder", "self_attention"): "encoder self-attention",
    ("decoder", "self_attention"): "decoder self-attention",
    ("decoder", "cross_attention"): "encoder-decoder attention",
}


def greedy_target(pipe, src_ids: list[int]) -> list[int]:
    """The greedy translation's ids, ending with eos when the model emitted one."""
    from transformer_jax.tasks.translation.decoding import translate_rows

    cfg = pipe.model_config
    max_len = np.asarray([min(len(src_ids) + pipe.extra_length, pipe.max_decode_len)], np.int32)
    ids = translate_rows(
        pipe.params,
        np.asarray([src_ids], np.int32),
        max_len,
        config=cfg,
        beam_size=1,
        alpha=pipe.alpha,
        max_decode_len=pipe.max_decode_len,
        forced_eos=pipe.forced_eos,
    )[0]
    out = []
    for t in ids.tolist():
        out.append(int(t))
        if t == cfg.eos_id:
            break
    while out and out[-1] == cfg.pad_id:  # a row cut by its length limit pads the rest
        out.pop()
    return out


def translation_attention(loaded, text: str, max_tokens: int = MAX_TOKENS) -> list[AttentionView]:
    """Every layer's encoder, decoder and encoder-decoder attention for `text`."""
    from transformer_jax.tasks.translation.model import EncoderDecoder, shift_right
    from transformer_jax.tasks.translation.pipeline import TranslationPipeline

    pipe = TranslationPipeline.from_loaded(loaded, beam_size=1, batch_size=1)
    cfg = pipe.model_config
    src_ids = pipe.encode_source(text)
    tgt_ids = greedy_target(pipe, src_ids) or [cfg.eos_id]
    notes = [cap_note("source", len(src_ids), max_tokens)]
    notes.append(cap_note("translation", len(tgt_ids), max_tokens))
    src_ids, tgt_ids = src_ids[:max_tokens], tgt_ids[:max_tokens]
    note = "; ".join(n for n in notes if n)

    inputs = np.asarray([src_ids], np.int32)
    targets = np.asarray([tgt_ids], np.int32)
    model = EncoderDecoder(inspection_config(cfg))
    # Every token is real (segment 1), even a generated one that equals the pad id.
    weights = collect_attention(
        model, pipe.params, inputs, targets, np.ones_like(inputs), np.ones_like(targets)
    )

    src_tok, tgt_tok = loaded.processors["src_tokenizer"], loaded.processors["tgt_tokenizer"]
    source = token_labels(src_tok, src_ids)
    predicted = token_labels(tgt_tok, tgt_ids)
    decoder_in = token_labels(tgt_tok, np.asarray(shift_right(targets, cfg.decoder_start_id))[0])
    views = []
    for path, w_BNTS in weights.items():
        kind = _KINDS.get((path[0], path[-1]))
        if kind is None:
            continue
        if path[0] == "encoder":
            rows, cols, labels = source, source, ("source", "source")
        elif path[-1] == "self_attention":
            rows, cols, labels = predicted, decoder_in, ("predicting", "decoder input")
        else:
            rows, cols, labels = predicted, source, ("predicting", "source")
        views.append(
            AttentionView(
                kind=kind,
                layer=layer_of(path),
                weights=w_BNTS[0],
                query_tokens=rows,
                key_tokens=cols,
                query_label=labels[0],
                key_label=labels[1],
                note=note,
            )
        )
    order = list(_KINDS.values())
    views.sort(key=lambda v: (order.index(v.kind), v.layer))
    return views
