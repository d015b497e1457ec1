"""The encoder-decoder of "Attention Is All You Need", for translation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.embed import Embed, add_positions, output_projection
from transformer_jax.nn.transformer import (
    Decoder,
    Encoder,
    default_positions,
    segments_from_ids,
)

# A final-logits bias this low gives a token probability 0 in float32 whatever the
# other logits (exp underflows): the model can never emit it. Imports ban tokens
# with -1e9 (see tasks.translation.marian.BANNED_LOGIT), far below.
BANNED_BELOW = -1.0e4


def emittable_tokens(config: TransformerConfig, params):
    """Bool [V_out]: the tokens the model can emit, or None when it can emit every token."""
    if not config.final_logits_bias:
        return None
    return jax.lax.stop_gradient(params["final_logits_bias"]) > BANNED_BELOW


def shift_right(targets_BT, start_id: int, pos_BT=None, seg_BT=None):
    """Decoder inputs: start token, then targets[:-1]; restarts per packed segment."""
    B = targets_BT.shape[0]
    start_B1 = jnp.full((B, 1), start_id, targets_BT.dtype)
    shifted_BT = jnp.concatenate([start_B1, targets_BT[:, :-1]], axis=1)
    if pos_BT is not None:
        shifted_BT = jnp.where(pos_BT == 0, start_id, shifted_BT)
    if seg_BT is not None:
        shifted_BT = jnp.where(seg_BT == 0, 0, shifted_BT)
    return shifted_BT


class EncoderDecoder(nn.Module):
    """Source ids [B, S] and target ids [B, T] -> logits [B, T, V].

    `__call__` is teacher-forced training/eval; `encode`, `init_cache` and
    `decode_step` are the three stages of autoregressive decoding.
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        # Blocks of the other stacks that this model does not build.
        for key, supported in (("norm_type", "layer"), ("position_type", "sinusoid")):
            if getattr(cfg, key) != supported:
                raise ValueError(
                    f"model.{key}={getattr(cfg, key)!r}: the translation model supports "
                    f"only {supported!r}"
                )
        if cfg.num_token_types:
            raise ValueError(
                f"model.num_token_types={cfg.num_token_types}: the translation model has no "
                "token-type embeddings"
            )
        self.source_embed = Embed(cfg.vocab_size, cfg, name="embed")
        if cfg.share_embeddings:
            self.target_embed = self.source_embed
        else:
            self.target_embed = Embed(cfg.output_vocab_size, cfg, name="target_embed")
        if not cfg.tie_output:
            self.logits_dense = output_projection(cfg, cfg.output_vocab_size)
        if cfg.final_logits_bias:
            self.logits_bias = self.param(
                "final_logits_bias",
                nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                (cfg.output_vocab_size,),
                cfg.param_dtype,
            )
        self.encoder = Encoder(cfg, name="encoder")
        self.decoder = Decoder(cfg, name="decoder")
        self.dropout = nn.Dropout(cfg.dropout_rate, deterministic=cfg.deterministic)
        if cfg.decode:
            # Absolute position of the next target token.
            self.position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))

    def _embed(self, embed: Embed, ids_BL, pos_BL):
        cfg = self.config
        x_BLD = embed(ids_BL)
        if cfg.scale_embeddings:
            x_BLD = x_BLD * jnp.asarray(cfg.d_model**0.5, cfg.dtype)
        x_BLD = add_positions(x_BLD, pos_BL, cfg)
        return self.dropout(x_BLD)

    def encode(self, inputs_BS, inputs_segmentation=None, inputs_position=None):
        cfg = self.config
        seg_BS = (
            segments_from_ids(inputs_BS, cfg.pad_id)
            if inputs_segmentation is None
            else inputs_segmentation
        )
        pos_BS = default_positions(inputs_BS) if inputs_position is None else inputs_position
        x_BSD = self._embed(self.source_embed, inputs_BS, pos_BS)
        return self.encoder(x_BSD, seg_BS, pos_BS)

    def logits(self, y_BTD):
        cfg = self.config
        if cfg.tie_output:
            logits_BTV = self.target_embed.attend(y_BTD)
        else:
            logits_BTV = self.logits_dense(y_BTD)
        if cfg.final_logits_bias:
            logits_BTV = logits_BTV + jnp.asarray(self.logits_bias, cfg.dtype)[None, None, :]
        return logits_BTV.astype(jnp.float32)

    def decode(
        self,
        encoded_BSD,
        inputs_segmentation_BS,
        decoder_inputs_BT,
        targets_segmentation=None,
        targets_position=None,
    ):
        seg_BT = (
            jnp.ones_like(decoder_inputs_BT, jnp.int32)
            if targets_segmentation is None
            else targets_segmentation
        )
        pos_BT = (
            default_positions(decoder_inputs_BT) if targets_position is None else targets_position
        )
        y_BTD = self._embed(self.target_embed, decoder_inputs_BT, pos_BT)
        y_BTD = self.decoder(y_BTD, encoded_BSD, seg_BT, pos_BT, inputs_segmentation_BS)
        return self.logits(y_BTD)

    def __call__(
        self,
        inputs,
        targets,
        inputs_segmentation=None,
        targets_segmentation=None,
        inputs_position=None,
        targets_position=None,
    ):
        """Teacher forcing: logits[b, t] predicts targets[b, t] from targets[b, :t]."""
        cfg = self.config
        if inputs_segmentation is None:
            inputs_segmentation = segments_from_ids(inputs, cfg.pad_id)
        if targets_segmentation is None:
            targets_segmentation = segments_from_ids(targets, cfg.pad_id)
        encoded = self.encode(inputs, inputs_segmentation, inputs_position)
        decoder_inputs = shift_right(
            targets,
            cfg.decoder_start_id,
            targets_position if targets_position is not None else None,
            targets_segmentation,
        )
        return self.decode(
            encoded, inputs_segmentation, decoder_inputs, targets_segmentation, targets_position
        )

    # ---- autoregressive decoding (config.decode=True) ------------------------------

    def init_cache(self, inputs_BS, max_decode_len: int):
        """Encodes the source and creates the cache (call with mutable=['cache'])."""
        cfg = self.config
        seg_BS = segments_from_ids(inputs_BS, cfg.pad_id)
        encoded_BSD = self.encode(inputs_BS, seg_BS)
        B = inputs_BS.shape[0]
        dummy_BT = jnp.zeros((B, max_decode_len), jnp.int32)
        y_BTD = jnp.zeros((B, max_decode_len, cfg.d_model), cfg.dtype)
        self.decoder(
            y_BTD, encoded_BSD, jnp.ones_like(dummy_BT), default_positions(dummy_BT), seg_BS
        )
        return encoded_BSD

    def decode_step(self, ids_BT):
        """Next-token logits [B, V] for T new tokens given the cache (mutable=['cache'])."""
        position = self.position
        B, T = ids_BT.shape
        pos_BT = jnp.broadcast_to(position.value + jnp.arange(T, dtype=jnp.int32), (B, T))
        position.value = position.value + T
        y_BTD = self._embed(self.target_embed, ids_BT, pos_BT)
        y_BTD = self.decoder(y_BTD, None, jnp.ones((B, T), jnp.int32), pos_BT, None)
        return self.logits(y_BTD[:, -1:, :])[:, 0, :]


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
