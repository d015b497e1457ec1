"""RoBERTa-base fine-tuned on IMDB movie reviews (binary sentiment, 512 tokens a review).

    tjax import-hf --from <folder with roberta-base's safetensors> --to runs/roberta-base
    tjax train --config classify_imdb_base --workdir runs/imdb \\
        --config.train.init_from=runs/roberta-base
    tjax eval --workdir runs/imdb            # the 25,000 test reviews
    tjax classify --workdir runs/imdb "One of the best films I have seen this year."

The folder is the Hub's `roberta-base` (config.json, model.safetensors, vocab.json,
merges.txt). Starting from an imported model, the architecture and the tokenizer come
from the checkpoint; the model keys here match roberta-base (BERT-base dimensions: 12
layers, d 768, 12 heads, d_ff 3072; position_offset 2, 514 positions, one token type,
LayerNorm eps 1e-5). Without `init_from` a SentencePiece model is trained on the
training split and the encoder starts from scratch: far below the figures here.
Data: tfds `imdb_reviews/plain_text` (25,000 train / 25,000 test reviews, labels neg and
pos), prepared beforehand (`tfds build imdb_reviews/plain_text --file_format=array_record`,
which needs TensorFlow and network access) into --config.data.data_dir. IMDB has no
validation split: training reads `train[:90%]` (22,500 reviews) and the evaluations
during training `train[90%:]` (2,500; TFDS stores the examples shuffled); `tjax eval`
scores the test split. Reviews longer than 512 tokens are cut at the end.
Recipe (BERT's fine-tuning): AdamW (weight decay 0.01), peak lr 2e-5 (1e-5 works too)
with a 6% linear warmup and linear decay to 0, batch 32, 3 epochs (2110 steps),
dropout 0.1.
Hardware: one A100/H100 or a TPU v4-8. An estimate from FLOPs, not measured: 9.3 TFLOP
a step, 19.6 PFLOP in all, about 3 minutes of compute at 40% of an A100's bfloat16
peak; with compilation, evaluations (2.4 PFLOP for the test split) and checkpoints
expect 10-20 minutes.
Should reach: about 94-95% test accuracy. Reported figures: about 94.6 for BERT-base
(Sun et al., 2019, "How to Fine-Tune BERT for Text Classification?", test error ~5.4);
large models read 95.5 (BERT-large) and 96.8 (XLNet-large) in the XLNet paper (Yang et
al., 2019, errors 4.51 and 3.20). Not measured with this config.
"""

from transformer_jax.tasks.classification.config import classification_base

TRAIN_EXAMPLES = 22_500  # train[:90%] of 25,000
BATCH_SIZE = 32
EPOCHS = 3


def get_config():
    c = classification_base()
    c.data.name = "imdb_reviews/plain_text"
    c.data.text_key = "text"
    c.data.label_key = "label"
    c.data.labels = ""  # the ClassLabel's names: neg, pos
    c.data.train_split = "train[:90%]"
    c.data.eval_split = "train[90%:]"
    c.data.test_split = "test"
    c.data.max_length = 512
    c.data.batch_size = BATCH_SIZE
    c.data.eval_batch_size = 64
    c.data.tokens_per_batch = c.data.batch_size * c.data.max_length
    c.data.eval_tokens_per_batch = c.data.eval_batch_size * c.data.max_length
    # roberta-base; an imported checkpoint's own architecture wins over these.
    c.model.update(
        d_model=768,
        num_heads=12,
        d_ff=3072,
        num_encoder_layers=12,
        max_position=514,
        num_token_types=1,
        layer_norm_eps=1e-5,
        dropout_rate=0.1,
        dtype="bfloat16",
    )
    c.model.position_offset = 2
    c.head.type = "roberta"
    c.optimizer.schedule = "linear"
    c.optimizer.peak_lr = 2e-5
    c.train.num_steps = -(-EPOCHS * TRAIN_EXAMPLES // BATCH_SIZE)  # 2110
    c.optimizer.warmup_steps = round(0.06 * c.train.num_steps)  # 127
    c.optimizer.final_lr_fraction = 0.0
    c.optimizer.weight_decay = 0.01
    c.optimizer.decay_embeddings = True  # as BERT's AdamW: all but norms and biases
    c.optimizer.grad_clip_norm = 1.0
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.eval_batches = 0  # the whole validation slice
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.classify.eval_examples = 0  # all of the split
    return c
