"""A Llama-style 1.1B decoder (TinyLlama's shape) trained from scratch on English Wikipedia.

    tjax train --config lm_llama_1b --workdir runs/llama1b --config.data.data_dir=DIR
    tjax eval --workdir runs/llama1b --split validation
    tjax generate --workdir runs/llama1b --temperature 0.8 --top-p 0.9 "The river"

Model: 22 layers, d 2048, 32 query heads sharing 4 key/value heads (grouped-query
attention), SwiGLU d_ff 5632, RMSNorm eps 1e-5, rotary positions (theta 10,000, the
halves layout of Llama), no biases, untied output projection, context 2048. Tokenizer: a
32k SentencePiece BPE. Data: tfds `wikipedia/20230601.en` (6.6M articles, feature
"text"), prepared beforehand into --config.data.data_dir (needs TensorFlow and network
access); it has only a train split, so evaluation reads `train[99%:]` and training
`train[:99%]`. Articles are packed into rows of 2048 tokens; longer ones are cut.
Recipe (TinyLlama/Llama 2): AdamW (b2 0.95, weight decay 0.1), peak lr 4e-4, 2,000
warmup steps, cosine decay to 10%, clip 1.0, 256 rows x 2048 = 0.5M tokens a step,
10,000 steps (5.2B tokens), bfloat16, fsdp sharding, remat of the matmul outputs.
Hardware: a TPU v4-64 or 32 x H100. An estimate from FLOPs, not measured:
6 x 1.1B x 5.2B = 34 EFLOP, about 2.7 hours at 40% of a v4-64's bfloat16 peak (32 chips);
expect 3-4 hours with evaluations and checkpoints (13 GB each with Adam's moments).
Should reach: a validation loss near 2.8 nats per token by Chinchilla's fitted law
(Hoffmann et al., 2022) for 1.1B parameters and 5.2B tokens (their data and tokenizer;
an estimate, not measured); Wikipedia's cleaner text usually scores lower.
"""

from transformer_jax.tasks.generation.config import lm_base


def get_config():
    c = lm_base()
    c.data.name = "wikipedia/20230601.en"
    c.data.text_key = "text"
    c.data.train_split = "train[:99%]"
    c.data.eval_split = "train[99%:]"
    c.data.test_split = "train[99%:]"
    c.data.max_length = 2048
    c.data.batch_size = 256
    c.data.eval_batch_size = 32
    c.data.tokens_per_batch = c.data.batch_size * c.data.max_length
    c.data.eval_tokens_per_batch = c.data.eval_batch_size * c.data.max_length
    c.tokenizer.vocab_size = 32000
    c.tokenizer.model_type = "bpe"
    c.tokenizer.max_train_sentences = 300_000
    c.model.update(
        d_model=2048,
        num_heads=32,
        num_kv_heads=4,
        d_ff=5632,
        num_decoder_layers=22,
        activation="swiglu",
        norm_type="rms",
        norm_position="pre",
        layer_norm_eps=1e-5,
        mlp_bias=False,
        attention_bias=False,
        position_type="rope",
        position_layout="halves",
        rope_theta=10000.0,
        tie_output=False,
        max_position=2048,
        dropout_rate=0.0,
        dtype="bfloat16",
        remat="dots",
        scan_layers=True,
    )
    c.optimizer.peak_lr = 4e-4
    c.optimizer.warmup_steps = 2000
    c.train.num_steps = 10_000
    c.train.eval_every = 1000
    c.train.eval_batches = 50
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.mesh.fsdp = -1
    c.mesh.data = 1
    c.mesh.rules = "fsdp"
    c.generate.eval_examples = 32
    return c
