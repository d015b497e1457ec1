"""Tiny bilingual (English + Spanish) sentiment classifier on the embedded review set.

    tjax train --config classify_tiny --workdir /tmp/classify
    tjax classify --workdir /tmp/classify "Este producto es excelente."   # POSITIVE 0.9x

Hardware: one CPU (2 cores are enough); a few minutes there, data preparation included.
Labels NEGATIVE, NEUTRAL, POSITIVE; the test split holds word combinations that training
never saw. A 3-layer, d=128 encoder with RoBERTa's head, trained from scratch.
"""

from transformer_jax.tasks.classification.config import classification_base


def get_config():
    c = classification_base()
    c.data.name = "sentiment_reviews"
    c.data.max_length = 32  # the longest review is 33 tokens; 99% are <= 26
    c.data.batch_size = 64
    c.data.eval_batch_size = 128
    c.tokenizer.vocab_size = 1000
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.d_ff = 512
    c.model.num_encoder_layers = 3
    c.model.max_position = 64
    c.model.dropout_rate = 0.1
    c.optimizer.peak_lr = 1e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.01
    c.train.num_steps = 600
    c.train.log_every = 100
    c.train.eval_every = 300
    c.train.eval_batches = 0  # the whole validation split
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 3
    c.classify.eval_examples = 0
    return c
