"""The paper's base Transformer on WMT14 English->German (Vaswani et al., 2017).

    tjax train --config translate_wmt14_base --workdir /mnt/shared/runs/base
    tjax average --workdir .../runs/base --last 5
    tjax eval --workdir .../runs/base --averaged --split test

Data: tfds `wmt14_translate/de-en`, prepared beforehand (`tfds build
wmt14_translate/de-en --file_format=array_record`, which needs TensorFlow and
network access) into --config.data.data_dir.
Hardware: 8 accelerators (the paper: 8 P100 GPUs, 12 hours for 100k steps of
~25k source + 25k target tokens). On a TPU v4-8 or 8 H100s expect 3-5 hours.
Should reach: 27.3 BLEU on newstest2014 after averaging the last 5 checkpoints
(beam 4, alpha 0.6), the paper's figure (tokenized BLEU; sacreBLEU reads ~1 lower).
65M parameters with the shared 37k BPE vocabulary.
"""

from transformer_jax.tasks.translation.config import translation_base


def get_config():
    c = translation_base()
    c.data.name = "wmt14_translate/de-en"
    c.data.src_key = "en"
    c.data.tgt_key = "de"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    c.data.max_length = 256
    c.data.tokens_per_batch = 50000  # ~25k source + ~25k target tokens per step
    c.tokenizer.vocab_size = 37000
    c.tokenizer.model_type = "bpe"
    c.train.num_steps = 100_000
    c.train.checkpoint_every = 2000
    c.train.keep_checkpoints = 10
    c.train.eval_every = 5000
    c.decode.max_decode_len = 306  # input + 50
    c.model.dtype = "bfloat16"
    return c
