"""The run config of text classification and masked-LM pre-training: every key, its checks.

Configs start from `classification_base()` (BERT-base's dimensions; RoBERTa's head) and
change what they need; `masked_lm_base()` is the same with `task = "masked_lm"`.
"""

from __future__ import annotations

import ml_collections

from transformer_jax.config import ConfigError, base, checker
from transformer_jax.nn.config import (
    ACTIVATIONS,
    NORM_POSITIONS,
    NORM_TYPES,
    POSITION_TYPES,
    TransformerConfig,
    from_settings,
    settings_of,
)
from transformer_jax.tasks.classification.model import HEADS, PROBLEM_TYPES, EncoderModelConfig

# Model-group keys that are not TransformerConfig fields.
ENCODER_MODEL_KEYS = ("embedding_norm", "position_offset")


def classification_base() -> ml_collections.ConfigDict:
    """Everything a classification run can set; BERT-base dimensions by default."""
    shared = base()
    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.seed = shared.seed

    c.data = ml_collections.ConfigDict()
    c.data.name = "sentiment_reviews"
    c.data.data_dir = ""  # "" = tfds default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.text_key = "text"
    c.data.label_key = "label"  # a ClassLabel, an int, a float (regression) or a 0/1 vector
    # The label names in the head's order; empty = the dataset's ClassLabel names.
    c.data.labels = ""  # comma-separated, e.g. "NEGATIVE,POSITIVE"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    c.data.max_length = 128  # tokens with [CLS]/[SEP]; longer texts are truncated
    c.data.batch_size = 32  # examples per step, all hosts together
    c.data.eval_batch_size = 64
    # The loss evaluation reads eval_tokens_per_batch // max_length examples a batch.
    c.data.tokens_per_batch = c.data.batch_size * c.data.max_length
    c.data.eval_tokens_per_batch = c.data.eval_batch_size * c.data.max_length

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.vocab_size = 8000
    c.tokenizer.model_type = "unigram"
    c.tokenizer.max_train_sentences = 1_000_000
    c.tokenizer.path = ""  # a trained .model file (with a "<mask>" piece) to use instead

    # Every field of the typed encoder config (BERT-base by default) and the embedding's.
    c.model = ml_collections.ConfigDict(settings_of(TransformerConfig))
    c.model.update(
        d_model=768,
        num_heads=12,
        d_ff=3072,
        num_encoder_layers=12,
        num_decoder_layers=0,
        activation="gelu",
        position_type="learned",
        scale_embeddings=False,
        attention_bias=True,
        layer_norm_eps=1e-12,
        max_position=512,
        num_token_types=1,
    )
    for key in ("dropout_rate", "attention_impl", "dtype", "remat"):
        c.model[key] = shared.model[key]
    c.model.embedding_norm = True  # LayerNorm after the embeddings (BERT, RoBERTa)
    c.model.position_offset = 0  # first position id (RoBERTa and XLM-R: 2)

    c.head = ml_collections.ConfigDict()
    c.head.type = "roberta"  # "roberta" | "bert" (the pooler)
    c.head.problem_type = "single_label"  # "single_label" | "multi_label" | "regression"
    c.head.dropout = -1.0  # < 0: model.dropout_rate
    # Per-label loss weights for imbalanced sets (single- and multi-label), in label order;
    # "" = all 1.
    c.head.class_weights = ""

    c.mlm = ml_collections.ConfigDict()
    c.mlm.mask_rate = 0.15  # of the real tokens ([CLS]/[SEP]/padding never)
    c.mlm.mask_token_fraction = 0.8  # of those: replaced by <mask>
    c.mlm.random_token_fraction = 0.1  # ... by a random token; the rest stay as they are
    c.mlm.whole_word = False  # mask all pieces of a chosen word

    c.optimizer = shared.optimizer
    c.optimizer.update(
        schedule="linear", peak_lr=1e-4, warmup_steps=1000, b2=0.999, eps=1e-6, weight_decay=0.01
    )
    c.train = shared.train
    c.train.label_smoothing = 0.0

    c.classify = ml_collections.ConfigDict()
    c.classify.batch_size = 64  # inference examples per batch
    c.classify.eval_examples = 0  # examples of the eval split scored in evaluations; 0 = all

    c.mesh = shared.mesh
    return c


def masked_lm_base() -> ml_collections.ConfigDict:
    """Masked-language-model pre-training of the same encoder."""
    c = classification_base()
    c.task = "masked_lm"
    return c


CHOICES: dict[str, tuple[str, ...]] = {
    "tokenizer.model_type": ("unigram", "bpe"),
    "model.activation": ACTIVATIONS,
    "model.norm_position": NORM_POSITIONS,
    "model.norm_type": NORM_TYPES,
    "model.position_type": POSITION_TYPES,
    "head.type": HEADS,
    "head.problem_type": PROBLEM_TYPES,
}


def parse_names(text: str) -> list[str]:
    return [n.strip() for n in str(text).split(",") if n.strip()]


def class_weights(cfg: ml_collections.ConfigDict) -> list[float]:
    """`head.class_weights` as floats ([] = none)."""
    try:
        return [float(w) for w in parse_names(cfg.head.class_weights)]
    except ValueError:
        raise ConfigError(
            f"config key 'head.class_weights'={cfg.head.class_weights!r}: give numbers "
            "separated by commas, one per label"
        ) from None


def validate_classification(cfg: ml_collections.ConfigDict) -> None:
    """The classification keys' checks (the shared keys are checked by `config.validate`)."""
    need, get = checker(cfg)
    for key, choices in CHOICES.items():
        need(key, lambda v, c=choices: v in c, f"choose one of {', '.join(choices)}")

    def at_least(low):
        return lambda v: v >= low

    need("data.text_key", lambda v: bool(v.strip()), "must not be empty")
    need("data.max_length", at_least(3), "must be >= 3 ([CLS], a token, [SEP])")
    need("data.batch_size", at_least(1), "must be >= 1")
    need("data.eval_batch_size", at_least(1), "must be >= 1")
    need("tokenizer.vocab_size", at_least(8), "must be >= 8")
    for key in ("d_model", "num_heads", "d_ff", "num_encoder_layers", "max_position"):
        need(f"model.{key}", at_least(1), "must be >= 1")
    need("model.num_kv_heads", at_least(0), "must be >= 0 (0 = model.num_heads)")
    need("model.num_token_types", at_least(0), "must be >= 0")
    need("model.position_offset", at_least(0), "must be >= 0")
    need("model.layer_norm_eps", lambda v: v > 0, "must be > 0")
    heads = get("model.num_heads")
    if isinstance(heads, int) and heads >= 1:
        d_model = get("model.d_model")
        need(
            "model.num_heads",
            lambda v: d_model is None or d_model % v == 0,
            f"must divide model.d_model={d_model}",
        )
    need("head.dropout", lambda v: v < 1.0, "must be < 1 (< 0: model.dropout_rate)")
    for key in ("mask_rate", "mask_token_fraction", "random_token_fraction"):
        need(f"mlm.{key}", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
    need("mlm.mask_rate", lambda v: v > 0.0, "must be > 0")
    m = cfg.mlm
    if m.mask_token_fraction + m.random_token_fraction > 1.0 + 1e-9:
        raise ConfigError(
            "config keys 'mlm.mask_token_fraction' + 'mlm.random_token_fraction' must be <= 1"
        )
    weights = class_weights(cfg)
    if any(w < 0 for w in weights):
        raise ConfigError(f"config key 'head.class_weights'={weights}: must be >= 0")
    need("classify.batch_size", at_least(1), "must be >= 1")
    need("classify.eval_examples", at_least(0), "must be >= 0 (0 = all)")


def model_config(
    cfg: ml_collections.ConfigDict,
    *,
    vocab_size: int,
    pad_id: int,
    num_labels: int,
    mlm_head: bool,
    mask_id: int = -1,
) -> EncoderModelConfig:
    """The one place where a run config becomes the typed encoder-model config."""
    m = cfg.model
    settings = {k: v for k, v in m.items() if k not in ENCODER_MODEL_KEYS}
    try:
        encoder = from_settings(
            settings,
            TransformerConfig,
            vocab_size=vocab_size,
            max_position=max(m.max_position, cfg.data.max_length + m.position_offset),
            pad_id=pad_id,
            num_decoder_layers=0,
        )
        return EncoderModelConfig(
            encoder=encoder,
            num_labels=num_labels,
            head=cfg.head.type,
            problem_type=cfg.head.problem_type,
            classifier_dropout=None if cfg.head.dropout < 0 else cfg.head.dropout,
            mlm_head=mlm_head,
            embedding_norm=m.embedding_norm,
            position_offset=m.position_offset,
            mask_id=mask_id,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def config_to_json(config: EncoderModelConfig) -> dict:
    from transformer_jax.nn.config import config_to_json as encoder_to_json

    out = {k: getattr(config, k) for k in config.__dataclass_fields__ if k != "encoder"}
    return {"encoder": encoder_to_json(config.encoder), **out}


def config_from_json(blob: dict) -> EncoderModelConfig:
    from transformer_jax.nn.config import config_from_json as encoder_from_json

    rest = {k: v for k, v in blob.items() if k != "encoder"}
    return EncoderModelConfig(encoder=encoder_from_json(blob["encoder"]), **rest)
