"""The translation run config: every key a translation run can set, and its checks.

Configs start from `translation_base()` (the paper's values) and change what they need.
"""

from __future__ import annotations

import ml_collections

from transformer_jax.config import ConfigError, base, checker
from transformer_jax.nn.config import (
    ACTIVATIONS,
    NORM_POSITIONS,
    NORM_TYPES,
    POSITION_LAYOUTS,
    POSITION_TYPES,
    TransformerConfig,
    from_settings,
    settings_of,
)


def translation_base() -> ml_collections.ConfigDict:
    """Everything a translation run can set, with the paper's values as defaults."""
    shared = base()
    c = ml_collections.ConfigDict()
    c.task = "translation"
    c.seed = shared.seed

    c.data = ml_collections.ConfigDict()
    c.data.name = "en_es_grammar"
    c.data.data_dir = ""  # "" = tfds default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.src_key = "en"
    c.data.tgt_key = "es"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    c.data.max_length = 256  # tokens per side; longer examples are truncated
    c.data.tokens_per_batch = 25000  # per step, all hosts together (paper: ~25k src + 25k tgt)
    c.data.batching = "pack"  # "pack" | "bucket"
    c.data.eval_tokens_per_batch = 8192

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.vocab_size = 37000  # paper: shared BPE of ~37k for EN-DE
    c.tokenizer.model_type = "bpe"
    c.tokenizer.max_train_sentences = 1_000_000
    c.tokenizer.path = ""  # a trained .model file to use instead of training one

    # Every field of the typed model config, with its defaults (the paper's base model);
    # the shared base's compute settings on top.
    c.model = ml_collections.ConfigDict(settings_of(TransformerConfig))
    for key in ("dropout_rate", "attention_impl", "dtype", "remat"):
        c.model[key] = shared.model[key]

    c.optimizer = shared.optimizer
    c.train = shared.train

    c.decode = ml_collections.ConfigDict()
    c.decode.beam_size = 4
    c.decode.alpha = 0.6
    # Beam scoring: "gnmt" = the paper's logp / ((5 + len) / 6) ** alpha; "hf" = Hugging
    # Face generate()'s logp / len ** length_penalty, stopping as early_stopping says.
    c.decode.length_penalty_type = "gnmt"
    c.decode.length_penalty = 1.0  # "hf" only (Hugging Face's length_penalty)
    c.decode.early_stopping = "false"  # "hf" only: "false" | "true" | "never", as in HF
    c.decode.forced_eos = False  # the last allowed output token is eos (HF forced_eos_token_id)
    c.decode.extra_length = 50  # max output = input length + 50
    c.decode.max_decode_len = 256
    c.decode.batch_size = 64
    c.decode.bleu_examples = 1000  # examples of the eval split scored during training (0 = all)

    c.mesh = shared.mesh
    return c


CHOICES: dict[str, tuple[str, ...]] = {
    "data.batching": ("pack", "bucket"),
    "tokenizer.model_type": ("unigram", "bpe", "char", "word"),
    "model.activation": ACTIVATIONS,
    "model.norm_position": NORM_POSITIONS,
    "model.position_layout": POSITION_LAYOUTS,
    "model.norm_type": NORM_TYPES,
    "model.position_type": POSITION_TYPES,
    "decode.length_penalty_type": ("gnmt", "hf"),
    "decode.early_stopping": ("false", "true", "never"),
}


def validate_translation(cfg: ml_collections.ConfigDict) -> None:
    """The translation keys' checks (the shared keys are checked by `config.validate`)."""
    need, get = checker(cfg)
    for key, choices in CHOICES.items():
        need(key, lambda v, c=choices: v in c, f"choose one of {', '.join(choices)}")

    def at_least(low):
        return lambda v: v >= low

    for key in ("src_key", "tgt_key"):
        need(f"data.{key}", lambda v: bool(v.strip()), "must not be empty")
    need("tokenizer.vocab_size", at_least(8), "must be >= 8")
    need("tokenizer.max_train_sentences", at_least(1), "must be >= 1")

    for key in ("d_model", "num_heads", "d_ff", "num_decoder_layers", "max_position"):
        need(f"model.{key}", at_least(1), "must be >= 1")
    need("model.num_encoder_layers", at_least(0), "must be >= 0")
    need("model.num_kv_heads", at_least(0), "must be >= 0 (0 = model.num_heads)")
    heads = get("model.num_heads")
    if isinstance(heads, int) and heads >= 1:
        d_model = get("model.d_model")
        need(
            "model.num_heads",
            lambda v: d_model is None or d_model % v == 0,
            f"must divide model.d_model={d_model}",
        )
        need(
            "model.num_kv_heads",
            lambda v: v == 0 or heads % v == 0,
            f"must divide model.num_heads={heads}",
        )
    need("model.layer_norm_eps", lambda v: v > 0, "must be > 0")
    need("model.rope_theta", lambda v: v > 0, "must be > 0")
    need("model.head_dim", at_least(0), "must be >= 0 (0 = model.d_model // model.num_heads)")
    need("model.num_token_types", at_least(0), "must be >= 0")

    need("decode.beam_size", at_least(1), "must be >= 1")
    need("decode.alpha", at_least(0), "must be >= 0")
    need("decode.extra_length", at_least(0), "must be >= 0")
    need("decode.max_decode_len", at_least(1), "must be >= 1")
    need("decode.batch_size", at_least(1), "must be >= 1")
    need("decode.bleu_examples", at_least(0), "must be >= 0 (0 = all)")


def model_config(
    cfg: ml_collections.ConfigDict,
    *,
    vocab_size: int,
    pad_id: int,
    eos_id: int,
    decoder_start_id: int,
) -> TransformerConfig:
    """The one place where a translation run config becomes the typed model config."""
    m = cfg.model
    try:
        return from_settings(
            m,
            TransformerConfig,
            vocab_size=vocab_size,
            target_vocab_size=None if m.share_embeddings else vocab_size,
            # Long enough for every training example and every decoded output.
            max_position=max(m.max_position, cfg.data.max_length, cfg.decode.max_decode_len + 1),
            pad_id=pad_id,
            eos_id=eos_id,
            decoder_start_id=decoder_start_id,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
