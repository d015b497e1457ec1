"""Tiny English->Spanish translation model on the embedded grammar corpus.

    tjax train --config translate_tiny --workdir /tmp/tiny

Hardware: one CPU (2 cores are enough). Takes 4 to 14 minutes there, data
preparation and the demo's evaluations included, depending on the CPU (about 13.6
minutes measured on a 2-core AMD EPYC with AVX2 and no AVX-512), and should reach a detokenized test BLEU above 80
(sacreBLEU; 92.7 for the last checkpoint and 94.8 for the average of the last
5, measured on a 2-core EPYC) with "The cat sleeps on the
couch." -> "El gato duerme en el sofá.".
"""

from transformer_jax.tasks.translation.config import translation_base


def get_config():
    c = translation_base()
    c.data.max_length = 32
    c.data.tokens_per_batch = 2048
    c.tokenizer.vocab_size = 600
    c.tokenizer.model_type = "unigram"
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.d_ff = 512
    c.model.num_encoder_layers = 3
    c.model.num_decoder_layers = 3
    c.model.dropout_rate = 0.1
    c.optimizer.lr_scale = 2.0
    c.optimizer.warmup_steps = 400
    c.train.num_steps = 1000
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.eval_batches = 4
    c.train.checkpoint_every = 25  # the last 5 (steps 900-1000) are averaged, as in the paper
    c.train.keep_checkpoints = 5
    c.decode.max_decode_len = 48
    c.decode.bleu_examples = 200
    c.decode.batch_size = 128
    return c
