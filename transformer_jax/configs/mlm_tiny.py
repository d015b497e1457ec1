"""Masked-language-model pre-training of the tiny encoder on the embedded review texts.

    tjax train --config mlm_tiny --workdir /tmp/mlm
    tjax fill-mask --workdir /tmp/mlm "El producto es <mask>."
    tjax train --config classify_tiny --workdir /tmp/ft --config.train.init_from=/tmp/mlm

BERT's corruption (15% of the tokens; 80% <mask>, 10% random, 10% unchanged); whole
words with --config.mlm.whole_word=True. The eval accuracy is masked-token accuracy.
The encoder matches `classify_tiny`, so a classifier can start from it.

Hardware: one CPU (2 cores are enough); a few minutes there.
"""

from transformer_jax.configs.classify_tiny import get_config as classify_tiny
from transformer_jax.tasks.classification.config import masked_lm_base


def get_config():
    c = masked_lm_base()
    tiny = classify_tiny()
    for group in ("data", "tokenizer", "model", "optimizer", "train"):
        c[group].update(tiny[group].to_dict())
    c.train.num_steps = 1000
    c.train.eval_every = 500
    c.train.eval_batches = 4
    c.train.checkpoint_every = 250
    return c
