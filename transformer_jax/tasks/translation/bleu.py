"""Corpus BLEU on detokenized text (sacreBLEU, its default 13a tokenizer)."""

from __future__ import annotations

import sacrebleu


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
