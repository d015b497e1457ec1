"""Run configs: the shared base, loading a config file, `--config.key=value` overrides.

A run config is an `ml_collections.ConfigDict`, loaded locked so a mistyped key
is an error. It becomes the typed, frozen `TransformerConfig` in exactly one
place, `model_config`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any

import jax.numpy as jnp
import ml_collections

from transformer_jax.nn.config import TransformerConfig


class ConfigError(ValueError):
    """A user-facing configuration problem (one line)."""


def translation_base() -> ml_collections.ConfigDict:
    """Everything a translation run can set, with the paper's values as defaults."""
    c = ml_collections.ConfigDict()
    c.task = "translation"
    c.seed = 0

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

    c.model = ml_collections.ConfigDict()
    c.model.d_model = 512
    c.model.num_heads = 8
    c.model.num_kv_heads = 0  # 0 = num_heads
    c.model.d_ff = 2048
    c.model.num_encoder_layers = 6
    c.model.num_decoder_layers = 6
    c.model.dropout_rate = 0.1
    c.model.activation = "relu"
    c.model.norm_position = "post"
    c.model.layer_norm_eps = 1e-6
    c.model.scale_embeddings = True
    c.model.share_embeddings = True
    c.model.tie_output = True
    c.model.attention_bias = False
    c.model.position_layout = "interleaved"
    c.model.max_position = 1024
    c.model.attention_impl = "auto"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.remat = "none"  # "none" | "full" | "dots" (save matmul outputs)
    c.model.scan_layers = False

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-9
    c.optimizer.schedule = "rsqrt"  # paper: d^-0.5 * min(step^-0.5, step * warmup^-1.5)
    c.optimizer.lr_scale = 1.0  # multiplies the schedule
    c.optimizer.warmup_steps = 4000
    c.optimizer.grad_clip_norm = 0.0  # 0 = off
    c.optimizer.weight_decay = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 100_000
    c.train.label_smoothing = 0.1
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.eval_batches = 20  # batches of the eval split for eval loss
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 20
    c.train.progress = True
    c.train.grad_accum_steps = 1  # micro-batches per update (same update as one big batch)
    c.train.on_nonfinite = "stop"  # "stop" | "skip": a NaN/inf loss or gradient
    c.train.inject_nonfinite_step = -1  # fault drill: make this step's gradient NaN

    c.decode = ml_collections.ConfigDict()
    c.decode.beam_size = 4
    c.decode.alpha = 0.6
    c.decode.extra_length = 50  # max output = input length + 50
    c.decode.max_decode_len = 256
    c.decode.batch_size = 64
    c.decode.bleu_examples = 1000  # examples of the eval split scored during training (0 = all)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.sequence = 1
    c.mesh.num_devices = 0  # 0 = every device; N = the first N
    # "data_parallel" | "fsdp" | "fsdp_tensor" | custom "batch:data+fsdp,embed:fsdp,..."
    c.mesh.rules = "data_parallel"
    return c


def load_config(
    path: str, overrides: list[str] | tuple[str, ...] = ()
) -> ml_collections.ConfigDict:
    """Runs `get_config()` of a config file, locks it and applies `key=value` overrides."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location("_tjax_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is the user's to fix
        raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return apply_overrides(module.get_config(), overrides)


def apply_overrides(
    cfg: ml_collections.ConfigDict, overrides: list[str] | tuple[str, ...] = ()
) -> ml_collections.ConfigDict:
    """Locks cfg, applies `key=value` overrides with the fields' own types, validates."""
    cfg.lock()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"config override {item!r} must look like key=value")
        set_key(cfg, key.strip(), value)
    validate(cfg)
    return cfg


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        keys.append(name)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_all_keys(v, name + "."))
    return keys


def set_key(cfg: ml_collections.ConfigDict, dotted: str, raw: Any) -> None:
    """Sets cfg.<dotted> from a string (or value), converting to the existing type."""
    node = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(dotted, _all_keys(cfg), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    old = node[parts[-1]]
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{dotted}' is a group; set one of its fields")
    value = _convert(dotted, old, raw)
    with node.unlocked():
        node[parts[-1]] = value


def _convert(key: str, old: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if isinstance(old, bool):
            low = text.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(old, int):
            return int(float(text)) if "e" in text.lower() else int(text)
        if isinstance(old, float):
            return float(text)
        if isinstance(old, str):
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, OverflowError):  # OverflowError: "1e999" for an int
        raise ConfigError(f"config key '{key}' expects {type(old).__name__}, got {raw!r}") from None


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Range checks a user can trip with an override; each names the key."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            value = cfg
            for p in key.split("."):
                value = value[p]
            raise ConfigError(f"config key '{key}'={value!r}: {why}")

    need(cfg.task in ("translation",), "task", "unknown task (choose 'translation')")
    need(cfg.data.max_length > 1, "data.max_length", "must be > 1")
    need(
        cfg.data.tokens_per_batch >= cfg.data.max_length,
        "data.tokens_per_batch",
        f"must be >= data.max_length={cfg.data.max_length}",
    )
    need(cfg.data.batching in ("pack", "bucket"), "data.batching", "choose 'pack' or 'bucket'")
    need(cfg.tokenizer.vocab_size >= 8, "tokenizer.vocab_size", "must be >= 8")
    need(cfg.optimizer.lr_scale > 0, "optimizer.lr_scale", "must be positive")
    need(cfg.optimizer.warmup_steps >= 1, "optimizer.warmup_steps", "must be >= 1")
    need(
        cfg.optimizer.schedule in ("rsqrt", "constant"),
        "optimizer.schedule",
        "choose 'rsqrt' or 'constant'",
    )
    need(cfg.train.num_steps >= 0, "train.num_steps", "must be >= 0")
    need(0.0 <= cfg.train.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
    need(
        cfg.train.on_nonfinite in ("stop", "skip"), "train.on_nonfinite", "choose 'stop' or 'skip'"
    )
    for key in (
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "grad_accum_steps",
    ):
        need(cfg.train[key] >= 1, f"train.{key}", "must be >= 1")
    need(cfg.decode.beam_size >= 1, "decode.beam_size", "must be >= 1")
    need(cfg.decode.max_decode_len >= 1, "decode.max_decode_len", "must be >= 1")
    need(
        cfg.model.dtype in ("float32", "bfloat16", "float16"),
        "model.dtype",
        "choose float32, bfloat16 or float16",
    )


def model_config(
    cfg: ml_collections.ConfigDict,
    *,
    vocab_size: int,
    pad_id: int,
    eos_id: int,
    decoder_start_id: int,
) -> TransformerConfig:
    """The one place where the run config becomes the typed model config."""
    m = cfg.model
    try:
        return TransformerConfig(
            vocab_size=vocab_size,
            d_model=m.d_model,
            num_heads=m.num_heads,
            num_kv_heads=m.num_kv_heads or None,
            d_ff=m.d_ff,
            num_encoder_layers=m.num_encoder_layers,
            num_decoder_layers=m.num_decoder_layers,
            dropout_rate=m.dropout_rate,
            activation=m.activation,
            norm_position=m.norm_position,
            layer_norm_eps=m.layer_norm_eps,
            scale_embeddings=m.scale_embeddings,
            share_embeddings=m.share_embeddings,
            target_vocab_size=None if m.share_embeddings else vocab_size,
            tie_output=m.tie_output,
            attention_bias=m.attention_bias,
            position_layout=m.position_layout,
            max_position=max(m.max_position, cfg.data.max_length, cfg.decode.max_decode_len + 1),
            attention_impl=m.attention_impl,
            dtype=jnp.dtype(m.dtype),
            remat=m.remat,
            scan_layers=m.scan_layers,
            pad_id=pad_id,
            eos_id=eos_id,
            decoder_start_id=decoder_start_id,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
