"""GPT-2 small (124M parameters) trained from scratch on the One Billion Word benchmark.

    tjax train --config lm_gpt2_124m --workdir runs/gpt2 --config.data.data_dir=DIR
    tjax eval --workdir runs/gpt2 --split test
    tjax generate --workdir runs/gpt2 "The company said on Tuesday that"

Model: GPT-2 small's shape (12 layers, d 768, 12 heads, d_ff 3072, learned positions,
pre-LN LayerNorm eps 1e-5, GELU (tanh), fused-free q/k/v with biases, output tied to the
token embedding), context 1024. Tokenizer: a 32k SentencePiece BPE trained on the first
million training sentences. Data: tfds `lm1b` (30.3M training sentences, about 0.8B
words; test 306k), prepared beforehand (`tfds build lm1b --file_format=array_record`,
needs TensorFlow and network access) into --config.data.data_dir. Sentences are packed,
[bos] sentence [eos] each, into rows of 1024 tokens with their own segment ids.
Recipe (GPT-2/GPT-3 small): AdamW (b2 0.95, weight decay 0.1), peak lr 6e-4, 2,000
warmup steps, cosine decay to 10%, clip 1.0, 512 rows x 1024 = 0.5M tokens a step,
10,000 steps (5.2B tokens, about 5 epochs), bfloat16 compute.
Hardware: 8 x A100/H100 (data parallel) or a TPU v4-32. An estimate from FLOPs, not
measured: 6 x 124M x 5.2B = 3.9 EFLOP, about 1.2 hours at 40% of 8 A100s' bfloat16
peak; expect 1.5-2 hours with evaluations and checkpoints.
Should reach: a validation loss near 3.2 nats per token by Chinchilla's fitted law
(Hoffmann et al., 2022) for 124M parameters and 5.2B tokens (their data and tokenizer;
an estimate, not a measured figure); word-level perplexities in the literature
(Transformer-XL base, 0.46B parameters: 23.5) are per word, not per subword token.
"""

from transformer_jax.tasks.generation.config import lm_base


def get_config():
    c = lm_base()  # GPT-2 small's model keys
    c.data.name = "lm1b"
    c.data.text_key = "text"
    c.data.train_split = "train"
    c.data.eval_split = "test"  # lm1b has train and test only
    c.data.test_split = "test"
    c.data.max_length = 1024
    c.data.batch_size = 512
    c.data.eval_batch_size = 64
    c.data.tokens_per_batch = c.data.batch_size * c.data.max_length
    c.data.eval_tokens_per_batch = c.data.eval_batch_size * c.data.max_length
    c.tokenizer.vocab_size = 32000
    c.tokenizer.model_type = "bpe"
    c.tokenizer.max_train_sentences = 1_000_000
    c.model.dropout_rate = 0.0
    c.model.dtype = "bfloat16"
    c.optimizer.peak_lr = 6e-4
    c.optimizer.warmup_steps = 2000
    c.train.num_steps = 10_000
    c.train.eval_every = 1000
    c.train.eval_batches = 50
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 5
    c.generate.eval_examples = 64
    return c
