"""The run config of causal language modelling: every key, its checks.

Configs start from `lm_base()` (GPT-2 small's dimensions: 12 layers, d 768, pre-LN,
learned positions, tied output) and change what they need; Llama-style models set
`model.norm_type="rms"`, `activation="swiglu"`, `position_type="rope"`, `tie_output=False`.
"""

from __future__ import annotations

import json

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
from transformer_jax.tasks.generation.text import lm_specials

LENGTH_PENALTY_TYPES = ("hf", "gnmt")
TRUNCATION = ("left", "error")


def lm_base() -> ml_collections.ConfigDict:
    """Everything a causal-LM run can set; GPT-2 small (124M) by default."""
    shared = base()
    c = ml_collections.ConfigDict()
    c.task = "causal_lm"
    c.seed = shared.seed

    c.data = ml_collections.ConfigDict()
    c.data.name = "lm_corpus"
    c.data.data_dir = ""  # "" = tfds default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.text_key = "text"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    # Tokens per row: documents ([bos] text [eos]) are packed into rows of this length,
    # each with its own segment id and positions; longer documents are cut into pieces.
    c.data.max_length = 1024
    c.data.batch_size = 32  # rows per step, all hosts together
    c.data.eval_batch_size = 32
    c.data.tokens_per_batch = c.data.batch_size * c.data.max_length
    c.data.eval_tokens_per_batch = c.data.eval_batch_size * c.data.max_length

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.vocab_size = 32000
    c.tokenizer.model_type = "bpe"
    c.tokenizer.max_train_sentences = 1_000_000
    c.tokenizer.path = ""  # a trained SentencePiece .model file to use instead

    c.model = ml_collections.ConfigDict(settings_of(TransformerConfig))
    c.model.update(
        d_model=768,
        num_heads=12,
        d_ff=3072,
        num_encoder_layers=0,
        num_decoder_layers=12,
        activation="gelu_tanh",
        norm_position="pre",
        layer_norm_eps=1e-5,
        position_type="learned",
        scale_embeddings=False,
        attention_bias=True,
        tie_output=True,
        max_position=1024,
    )
    for key in ("dropout_rate", "attention_impl", "dtype", "remat"):
        c.model[key] = shared.model[key]

    c.optimizer = shared.optimizer
    c.optimizer.update(
        schedule="cosine",
        peak_lr=6e-4,
        warmup_steps=2000,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        grad_clip_norm=1.0,
        final_lr_fraction=0.1,
    )
    c.train = shared.train
    c.train.label_smoothing = 0.0

    g = c.generate = ml_collections.ConfigDict()
    g.max_new_tokens = 64
    g.temperature = 0.0  # 0 = greedy
    g.top_k = 0  # 0 = off
    g.top_p = 1.0  # 1 = off
    g.repetition_penalty = 1.0  # 1 = off
    g.num_beams = 1  # > 1: beam search
    g.length_penalty = 1.0  # beam search: the exponent ("hf") or alpha ("gnmt")
    g.length_penalty_type = "hf"  # "hf": logp / len**p, as transformers; "gnmt": Wu et al.
    g.num_return_sequences = 1
    g.seed = 0
    g.stop = ""  # a JSON list of stop strings, e.g. '["\\n", "."]'; "" = none
    g.batch_size = 16  # prompts per decoding batch
    g.add_bos = True  # prompts start with the bos token (an empty prompt always does)
    g.truncation = "left"  # an over-long prompt: "left" keeps its end (a warning) | "error"
    g.eval_examples = 64  # validation prompts continued (and shown) at each evaluation

    c.mesh = shared.mesh
    return c


CHOICES: dict[str, tuple[str, ...]] = {
    "tokenizer.model_type": ("unigram", "bpe"),
    "model.activation": ACTIVATIONS,
    "model.norm_position": NORM_POSITIONS,
    "model.norm_type": NORM_TYPES,
    "model.position_type": POSITION_TYPES,
    "model.position_layout": POSITION_LAYOUTS,
    "generate.length_penalty_type": LENGTH_PENALTY_TYPES,
    "generate.truncation": TRUNCATION,
}


def stop_strings(value: str) -> list[str]:
    """`generate.stop` as a list of strings."""
    if not value:
        return []
    try:
        out = json.loads(value)
    except json.JSONDecodeError:
        out = None
    if not (isinstance(out, list) and all(isinstance(s, str) and s for s in out)):
        raise ConfigError(
            f"config key 'generate.stop'={value!r}: give a JSON list of non-empty strings, "
            "e.g. '[\"\\n\"]'"
        )
    return out


def validate_lm(cfg: ml_collections.ConfigDict) -> None:
    """The causal-LM keys' checks (the shared keys are checked by `config.validate`)."""
    need, get = checker(cfg)
    for key, choices in CHOICES.items():
        need(key, lambda v, c=choices: v in c, f"choose one of {', '.join(choices)}")

    def at_least(low):
        return lambda v: v >= low

    need("data.text_key", lambda v: bool(v.strip()), "must not be empty")
    need("data.max_length", at_least(2), "must be >= 2")
    need("data.batch_size", at_least(1), "must be >= 1")
    need("data.eval_batch_size", at_least(1), "must be >= 1")
    need("tokenizer.vocab_size", at_least(8), "must be >= 8")
    for key in ("d_model", "num_heads", "d_ff", "num_decoder_layers", "max_position"):
        need(f"model.{key}", at_least(1), "must be >= 1")
    need("model.num_encoder_layers", lambda v: v == 0, "must be 0 (a decoder-only model)")
    need("model.num_token_types", lambda v: v == 0, "must be 0 (a decoder-only model)")
    need("model.num_kv_heads", at_least(0), "must be >= 0 (0 = model.num_heads)")
    need("model.layer_norm_eps", lambda v: v > 0, "must be > 0")
    heads = get("model.num_heads")
    if isinstance(heads, int) and heads >= 1:
        d_model, head_dim = get("model.d_model"), get("model.head_dim")
        need(
            "model.num_heads",
            lambda v: head_dim or d_model is None or d_model % v == 0,
            f"must divide model.d_model={d_model}",
        )
    length, context = get("data.max_length"), get("model.max_position")
    if isinstance(length, int) and isinstance(context, int) and length > context:
        raise ConfigError(
            f"config key 'data.max_length'={length} exceeds model.max_position={context} "
            "(the context the model's positions cover)"
        )
    g = "generate."
    need(g + "max_new_tokens", at_least(0), "must be >= 0")
    need(g + "temperature", at_least(0.0), "must be >= 0 (0 = greedy)")
    need(g + "top_k", at_least(0), "must be >= 0 (0 = off)")
    need(g + "top_p", lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")
    need(g + "repetition_penalty", lambda v: v > 0, "must be > 0 (1 = off)")
    need(g + "num_beams", at_least(1), "must be >= 1")
    need(g + "num_return_sequences", at_least(1), "must be >= 1")
    need(g + "batch_size", at_least(1), "must be >= 1")
    need(g + "eval_examples", at_least(0), "must be >= 0")
    stop_strings(cfg.generate.stop)


def model_config(cfg: ml_collections.ConfigDict, tokenizer) -> TransformerConfig:
    """The one place where a run config becomes the typed decoder-only model config."""
    s = lm_specials(tokenizer)
    try:
        return from_settings(
            cfg.model,
            TransformerConfig,
            vocab_size=int(tokenizer.vocab_size),
            pad_id=s.pad_id,
            eos_id=s.eos_id,
            decoder_start_id=s.bos_id,
            num_encoder_layers=0,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
