"""A BERT/RoBERTa-style text encoder with a sequence-classification head and a masked-LM head.

Embeddings (token + learned position + optional token type, then LayerNorm and dropout
when `embedding_norm`), the shared encoder stack (`nn.transformer.Encoder`), then:

- the classification head on the first token. `head="roberta"`: dropout -> dense ->
  tanh -> dropout -> projection (RoBERTa's head); `head="bert"`: dense -> tanh (BERT's
  pooler) -> dropout -> projection. Its outputs are logits for `problem_type`
  "single_label" (softmax), "multi_label" (one sigmoid per label) or "regression"
  (one value per label, usually one);
- the masked-LM head: dense -> activation -> LayerNorm -> the token embedding's
  transpose plus a bias (BERT and RoBERTa's).

Positions of real tokens are `position_offset + 0, 1, ...` (RoBERTa and XLM-R count from
pad_id + 1 = 2; BERT from 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.embed import Embed, TokenTypeEmbed
from transformer_jax.nn.mlp import activation_fn
from transformer_jax.nn.norms import make_norm
from transformer_jax.nn.positions import AddPositions
from transformer_jax.nn.transformer import Encoder, default_positions, segments_from_ids

HEADS = ("roberta", "bert")
PROBLEM_TYPES = ("single_label", "multi_label", "regression")


@dataclasses.dataclass(frozen=True)
class EncoderModelConfig:
    """The encoder's `TransformerConfig` plus what sits around it."""

    encoder: TransformerConfig
    num_labels: int = 0  # 0: no classification head (an encoder to fine-tune)
    head: str = "roberta"
    problem_type: str = "single_label"
    classifier_dropout: float | None = None  # None: the encoder's dropout_rate
    mlm_head: bool = False
    embedding_norm: bool = True
    position_offset: int = 0
    mask_id: int = -1  # the tokenizer's mask token (masked-LM inputs); -1: none

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, why: str) -> None:
            raise ValueError(f"{key}={value!r}: {why}")

        if self.num_labels < 0:
            bad("num_labels", self.num_labels, "must be >= 0")
        if self.head not in HEADS:
            bad("head.type", self.head, f"choose one of {HEADS}")
        if self.problem_type not in PROBLEM_TYPES:
            bad("head.problem_type", self.problem_type, f"choose one of {PROBLEM_TYPES}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            bad("head.dropout", self.classifier_dropout, "must be in [0, 1) (or None)")
        if self.position_offset < 0:
            bad("model.position_offset", self.position_offset, "must be >= 0")
        if self.encoder.num_encoder_layers < 1:
            bad("model.num_encoder_layers", self.encoder.num_encoder_layers, "must be >= 1")

    # The trainer reads these of any model config.
    @property
    def d_model(self) -> int:
        return self.encoder.d_model

    @property
    def attention_impl(self) -> str:
        return self.encoder.attention_impl

    @property
    def dtype(self):
        return self.encoder.dtype

    @property
    def pad_id(self) -> int:
        return self.encoder.pad_id

    def replace(self, **changes: Any) -> EncoderModelConfig:
        """Changes fields of this config; other names go to the encoder's config."""
        own = {f.name for f in dataclasses.fields(self)}
        mine = {k: v for k, v in changes.items() if k in own}
        theirs = {k: v for k, v in changes.items() if k not in own}
        if theirs:
            mine["encoder"] = mine.get("encoder", self.encoder).replace(**theirs)
        return dataclasses.replace(self, **mine)


def _dense(cfg: TransformerConfig, features: int, name: str, axes=("embed", "mlp")) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


class ClassificationHead(nn.Module):
    """First token [B, D] -> logits [B, num_labels] (float32)."""

    config: EncoderModelConfig

    @nn.compact
    def __call__(self, cls_BD: jax.Array) -> jax.Array:
        c = self.config
        rate = c.encoder.dropout_rate if c.classifier_dropout is None else c.classifier_dropout
        drop = nn.Dropout(rate, deterministic=c.encoder.deterministic)
        if c.head == "roberta":
            cls_BD = drop(cls_BD)
        x_BD = jnp.tanh(_dense(c.encoder, c.d_model, "pooler", ("embed", "mlp"))(cls_BD))
        x_BD = drop(x_BD)
        logits_BK = _dense(c.encoder, c.num_labels, "classifier", ("mlp", None))(x_BD)
        return logits_BK.astype(jnp.float32)


class MaskedLMHead(nn.Module):
    """Hidden [B, L, D] -> token logits [B, L, V] (float32), tied to the token embedding."""

    config: EncoderModelConfig

    @nn.compact
    def __call__(self, h_BLD: jax.Array, embed: Embed) -> jax.Array:
        cfg = self.config.encoder
        x = _dense(cfg, cfg.d_model, "dense", ("embed", "mlp"))(h_BLD)
        x = activation_fn(cfg.activation)(x)
        x = make_norm(cfg.replace(norm_type="layer"), "norm")(x)
        bias_V = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (cfg.vocab_size,),
            cfg.param_dtype,
        )
        logits = embed.attend(x) + jnp.asarray(bias_V, cfg.dtype)[None, None, :]
        return logits.astype(jnp.float32)


class TextEncoderModel(nn.Module):
    """Token ids [B, L] -> {"hidden": [B, L, D], "logits": [B, K], "mlm_logits": [B, L, V]}
    (each head's output when the config has that head)."""

    config: EncoderModelConfig

    def setup(self) -> None:
        c = self.config
        cfg = c.encoder
        self.embed = Embed(cfg.vocab_size, cfg, name="embed")
        self.positions = AddPositions(cfg, name="positions")
        if cfg.num_token_types:
            self.token_types = TokenTypeEmbed(cfg, name="token_types")
        if c.embedding_norm:
            self.embed_norm = make_norm(cfg, "embed_norm")
        self.dropout = nn.Dropout(cfg.dropout_rate, deterministic=cfg.deterministic)
        self.encoder = Encoder(cfg, name="encoder")
        if c.num_labels:
            self.head = ClassificationHead(c, name="head")
        if c.mlm_head:
            self.mlm = MaskedLMHead(c, name="mlm")

    def encode(self, ids_BL, token_types_BL=None, segment_ids_BL=None):
        c = self.config
        cfg = c.encoder
        seg_BL = segments_from_ids(ids_BL, cfg.pad_id) if segment_ids_BL is None else segment_ids_BL
        pos_BL = default_positions(ids_BL) + c.position_offset
        x_BLD = self.embed(ids_BL)
        if cfg.scale_embeddings:
            x_BLD = x_BLD * jnp.asarray(cfg.d_model**0.5, cfg.dtype)
        x_BLD = self.positions(x_BLD, pos_BL)
        if cfg.num_token_types:
            types_BL = jnp.zeros_like(ids_BL) if token_types_BL is None else token_types_BL
            x_BLD = x_BLD + self.token_types(types_BL)
        if c.embedding_norm:
            x_BLD = self.embed_norm(x_BLD)
        x_BLD = self.dropout(x_BLD)
        # The encoder's own positions feed rotary attention only (learned ones are added above).
        return self.encoder(x_BLD, seg_BL, pos_BL)

    def __call__(self, ids_BL, token_types_BL=None, segment_ids_BL=None, heads=None):
        """`heads`: the names among ("logits", "mlm_logits") to compute (None: all the
        config has)."""
        h_BLD = self.encode(ids_BL, token_types_BL, segment_ids_BL)
        out = {"hidden": h_BLD}
        if self.config.num_labels and (heads is None or "logits" in heads):
            out["logits"] = self.head(h_BLD[:, 0])
        if self.config.mlm_head and (heads is None or "mlm_logits" in heads):
            out["mlm_logits"] = self.mlm(h_BLD, self.embed)
        return out
