"""The typed, frozen model configuration shared by every Transformer stack."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

# The *glu activations select the gated feed-forward act(x W0) * (x W1).
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swish", "silu", "swiglu", "geglu", "geglu_tanh")
NORM_POSITIONS = ("post", "pre")
NORM_TYPES = ("layer", "rms")
POSITION_LAYOUTS = ("interleaved", "halves")
POSITION_TYPES = ("sinusoid", "learned", "rope", "none")
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of a Transformer stack; layers receive only this.

    The defaults are the paper's base model ("Attention Is All You Need", 2017):
    post-LN, sinusoidal positions, embeddings scaled by sqrt(d_model), one shared
    source/target embedding tied to the pre-softmax projection, ReLU feed-forward.
    """

    vocab_size: int = 32000
    target_vocab_size: int | None = None  # only when share_embeddings is False
    d_model: int = 512
    num_heads: int = 8
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
    head_dim: int | None = None  # None = d_model // num_heads
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout_rate: float = 0.1
    activation: str = "relu"
    norm_position: str = "post"
    layer_norm_eps: float = 1e-6  # epsilon of either norm type
    norm_type: str = "layer"  # "layer": LayerNorm; "rms": RMSNorm (scale only)
    mlp_bias: bool = True  # biases on the feed-forward projections
    # LayerScale (Touvron et al., 2021, "Going deeper with image transformers"): each
    # residual branch is multiplied by a learnt per-channel gain starting at this value, so
    # a layer starts near the identity; 0 = off (no parameter).
    layer_scale_init: float = 0.0
    scale_embeddings: bool = True
    share_embeddings: bool = True  # encoder and decoder read one table
    tie_output: bool = True  # pre-softmax projection = target embedding^T
    final_logits_bias: bool = False
    attention_bias: bool = False  # biases on the q/k/v/o projections
    position_layout: str = "interleaved"  # paper: sin/cos interleaved; "halves": [sin | cos]
    # "sinusoid" (fixed, added), "learned" (absolute table, added), "rope" (rotary on q/k;
    # position_layout "halves" = Llama/GPT-NeoX pairs, "interleaved" = GPT-J pairs), "none".
    position_type: str = "sinusoid"
    rope_theta: float = 10000.0
    num_token_types: int = 0  # BERT-style token-type (segment A/B) embeddings; 0 = none
    max_position: int = 1024
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 2
    attention_impl: str = "auto"
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False  # jax.lax.scan over layers (flat compile time in depth)
    deterministic: bool = True  # False while training (dropout on)
    decode: bool = False  # True for autoregressive decoding with a KV cache

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, why: str) -> None:
            raise ValueError(f"model.{key}={value!r}: {why}")

        for key in ("vocab_size", "d_model", "num_heads", "d_ff", "max_position"):
            if getattr(self, key) <= 0:
                bad(key, getattr(self, key), "must be positive")
        for key in ("num_encoder_layers", "num_decoder_layers"):
            if getattr(self, key) < 0:
                bad(key, getattr(self, key), "must be >= 0")
        if self.num_kv_heads is not None and self.num_kv_heads < 0:
            bad("num_kv_heads", self.num_kv_heads, "must be positive (None or 0: num_heads)")
        if self.head_dim is not None and self.head_dim <= 0:
            bad("head_dim", self.head_dim, "must be positive (None: d_model // num_heads)")
        if self.head_dim is None and self.d_model % self.num_heads:
            bad("num_heads", self.num_heads, f"must divide d_model={self.d_model}")
        if self.num_heads % self.kv_heads:
            bad("num_kv_heads", self.num_kv_heads, f"must divide num_heads={self.num_heads}")
        if not 0.0 <= self.dropout_rate < 1.0:
            bad("dropout_rate", self.dropout_rate, "must be in [0, 1)")
        if self.activation not in ACTIVATIONS:
            bad("activation", self.activation, f"choose one of {ACTIVATIONS}")
        if self.norm_position not in NORM_POSITIONS:
            bad("norm_position", self.norm_position, f"choose one of {NORM_POSITIONS}")
        if self.position_layout not in POSITION_LAYOUTS:
            bad("position_layout", self.position_layout, f"choose one of {POSITION_LAYOUTS}")
        if self.norm_type not in NORM_TYPES:
            bad("norm_type", self.norm_type, f"choose one of {NORM_TYPES}")
        if self.position_type not in POSITION_TYPES:
            bad("position_type", self.position_type, f"choose one of {POSITION_TYPES}")
        if not self.rope_theta > 0:
            bad("rope_theta", self.rope_theta, "must be positive")
        if self.position_type == "rope" and self.dim_per_head % 2:
            bad("head_dim", self.dim_per_head, "must be even for rotary positions")
        if self.layer_scale_init < 0:
            bad("layer_scale_init", self.layer_scale_init, "must be >= 0 (0 = off)")
        if self.num_token_types < 0:
            bad("num_token_types", self.num_token_types, "must be >= 0")
        if self.remat not in REMAT_POLICIES:
            bad("remat", self.remat, f"choose one of {REMAT_POLICIES}")
        if not self.share_embeddings and self.target_vocab_size is None:
            bad("target_vocab_size", None, "required when share_embeddings is False")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def output_vocab_size(self) -> int:
        return self.vocab_size if self.share_embeddings else int(self.target_vocab_size)

    def replace(self, **changes: Any) -> TransformerConfig:
        return dataclasses.replace(self, **changes)


def config_to_json(config: TransformerConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["dtype"] = jnp.dtype(config.dtype).name
    out["param_dtype"] = jnp.dtype(config.param_dtype).name
    return out


def config_from_json(blob: dict[str, Any]) -> TransformerConfig:
    known = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(blob) - known)
    if unknown:
        raise ValueError(f"model config has unknown fields {unknown}")
    blob = dict(blob)
    for key in ("dtype", "param_dtype"):
        if key in blob:
            blob[key] = jnp.dtype(blob[key])
    return TransformerConfig(**blob)


# Set from a task's processors or by the code (training vs decoding), never by a run
# config's `model` group.
DERIVED_FIELDS = (
    "vocab_size",
    "target_vocab_size",
    "pad_id",
    "eos_id",
    "decoder_start_id",
    "param_dtype",
    "deterministic",
    "decode",
)


def settings_of(cls: type = TransformerConfig, derived: tuple[str, ...] = DERIVED_FIELDS):
    """The run-config form of a typed model config: `{field: default}` for every field a
    user sets, so a task's `model` group lists each field once (here, in the dataclass).

    Optional fields (default None) read 0 in a run config; dtypes read as their names.
    """
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in derived:
            continue
        value = f.default
        if value is None:
            value = 0
        elif f.name.endswith("dtype"):
            value = jnp.dtype(value).name
        out[f.name] = value
    return out


def from_settings(settings: Mapping[str, Any], cls: type = TransformerConfig, **derived: Any):
    """The typed config from a run config's `model` group plus the derived fields.

    Keys of the group that are not fields of `cls` are ignored (a task may keep its own
    model-related settings there); 0 in an optional field means None.
    """
    optional = {f.name for f in dataclasses.fields(cls) if f.default is None}
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key in known & set(settings):
        if key in derived:
            continue
        value = settings[key]
        if key in optional and value == 0:
            value = None
        elif key.endswith("dtype") and isinstance(value, str):
            value = jnp.dtype(value)
        values[key] = value
    return cls(**values, **derived)
