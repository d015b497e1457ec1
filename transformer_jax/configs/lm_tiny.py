"""A tiny Llama-style language model on the embedded English/Spanish text.

    tjax train --config lm_tiny --workdir /tmp/lm
    tjax generate --workdir /tmp/lm "Ana has a red kite."
    tjax eval --workdir /tmp/lm --split test      # loss and perplexity

Hardware: one CPU (2 cores are enough); under ten minutes there, data preparation
included (8 min 4 s measured on an AVX2-only EPYC: validation perplexity 3.48, where a
bigram model of the same split scores 17.2). Data: `lm_corpus` (20,000 training documents: sentences and reviews of the
other embedded sets and short stories whose later sentences repeat what the first ones
said), packed into rows of 128 tokens. Model: 4 layers, d 128, 4 query heads sharing 2
key/value heads, SwiGLU, RMSNorm, rotary positions, untied output; a 2,000-piece
SentencePiece BPE.
"""

from transformer_jax.tasks.generation.config import lm_base


def get_config():
    c = lm_base()
    c.data.name = "lm_corpus"
    c.data.max_length = 128
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.tokens_per_batch = c.data.batch_size * c.data.max_length
    c.data.eval_tokens_per_batch = c.data.eval_batch_size * c.data.max_length
    c.tokenizer.vocab_size = 2000
    c.tokenizer.model_type = "bpe"
    c.model.update(
        d_model=128,
        num_heads=4,
        num_kv_heads=2,
        d_ff=384,
        num_decoder_layers=4,
        activation="swiglu",
        norm_type="rms",
        layer_norm_eps=1e-5,
        mlp_bias=False,
        attention_bias=False,
        position_type="rope",
        position_layout="halves",
        tie_output=False,
        max_position=256,
        dropout_rate=0.0,
    )
    c.optimizer.peak_lr = 3e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.1
    c.train.num_steps = 400
    c.train.log_every = 100
    c.train.eval_every = 400
    c.train.eval_batches = 0  # the whole validation split
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 3
    c.generate.max_new_tokens = 48
    c.generate.eval_examples = 64
    return c
