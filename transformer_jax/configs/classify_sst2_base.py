"""RoBERTa-base fine-tuned on SST-2 (GLUE's binary sentiment task), the papers' recipe.

    tjax import-hf --from <folder with roberta-base's safetensors> --to runs/roberta-base
    tjax train --config classify_sst2_base --workdir runs/sst2 \\
        --config.train.init_from=runs/roberta-base
    tjax eval --workdir runs/sst2
    tjax classify --workdir runs/sst2 "A gorgeous, witty, seductive movie."

The folder is the Hub's `roberta-base` (config.json, model.safetensors, vocab.json,
merges.txt). Starting from an imported model, the architecture and the tokenizer come
from the checkpoint; the model keys here match roberta-base (BERT-base dimensions: 12
layers, d 768, 12 heads, d_ff 3072; position_offset 2, 514 positions, one token type,
LayerNorm eps 1e-5). Without `init_from` a SentencePiece model is trained on the
training split and the encoder starts from scratch: far below the figures here.
Data: tfds `glue/sst2` (67,349 train / 872 validation sentences, labels negative and
positive), prepared beforehand (`tfds build glue/sst2 --file_format=array_record`, which
needs TensorFlow and network access) into --config.data.data_dir. GLUE's test split has
no labels (-1): evaluation and `tjax eval` use the validation split.
Recipe (BERT; RoBERTa's GLUE settings): AdamW (weight decay 0.01), peak lr 2e-5 with a
6% linear warmup and linear decay to 0, batch 32, 3 epochs (6314 steps), dropout 0.1.
Hardware: one A100/H100 or a TPU v4-8. An estimate from FLOPs, not measured: 2.1 TFLOP
a step, 13.5 PFLOP in all, about 2 minutes of compute at 40% of an A100's bfloat16
peak; with compilation, evaluations and checkpoints (1.5 GB each) expect 10-20 minutes.
Should reach: about 94.8% validation accuracy, RoBERTa-base's figure in fairseq's RoBERTa
README (its recipe: 10 epochs at lr 1e-5); BERT-base reads 92.7 (Sanh et al., 2019).
Single fine-tuning runs vary by a few tenths with the seed.
"""

from transformer_jax.tasks.classification.config import classification_base

TRAIN_EXAMPLES = 67_349
BATCH_SIZE = 32
EPOCHS = 3


def get_config():
    c = classification_base()
    c.data.name = "glue/sst2"
    c.data.text_key = "sentence"
    c.data.label_key = "label"
    c.data.labels = ""  # the ClassLabel's names: negative, positive
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "validation"  # the test split's labels are hidden (-1)
    c.data.max_length = 128
    c.data.batch_size = BATCH_SIZE
    c.data.eval_batch_size = 128
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
    c.train.num_steps = -(-EPOCHS * TRAIN_EXAMPLES // BATCH_SIZE)  # 6314
    c.optimizer.warmup_steps = round(0.06 * c.train.num_steps)  # 379
    c.optimizer.final_lr_fraction = 0.0
    c.optimizer.weight_decay = 0.01
    c.optimizer.decay_embeddings = True  # as BERT's AdamW: all but norms and biases
    c.optimizer.grad_clip_norm = 1.0
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.eval_batches = 0  # the whole validation split
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.classify.eval_examples = 0  # all 872
    return c
