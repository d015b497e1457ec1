"""Image and video encoders: patches (or tubelets) -> the shared Transformer encoder.

    ImageEncoder(config)(pixels_NHWC)   -> tokens [N, config.image_tokens, D]
    TubeletEncoder(config)(frames_NFHWC) -> tokens [N, config.video_tokens, D]

Pixels are normalized by the caller, x = (uint8 / 255 - 0.5) / 0.5. D = stack.d_model.
Shape suffixes: N images (or clips), F frames, H/W pixels, C channels, P tokens,
G = image_size // patch_size patches per side, T = num_frames // tubelet_frames.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.nn.transformer import Encoder
from transformer_jax.tasks.multimodal.media_config import VisionConfig


def sincos_1d(length: int, dim: int) -> np.ndarray:
    """[length, dim] float32: [sin(p w_k) | cos(p w_k)], w_k = 10000^(-k / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos positions need an even width, got {dim}")
    omega_K = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
    angle_LK = np.arange(length, dtype=np.float64)[:, None] * omega_K[None, :]
    return np.concatenate([np.sin(angle_LK), np.cos(angle_LK)], axis=1).astype(np.float32)


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """[grid * grid, dim] float32, MAE's fixed 2-D table over a row-major patch grid:
    the first dim/2 columns encode the patch's column, the last dim/2 its row."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    axis_GE = sincos_1d(grid, dim // 2)
    col_PE = np.tile(axis_GE, (grid, 1))  # patch r * grid + c -> column c
    row_PE = np.repeat(axis_GE, grid, axis=0)  # -> row r
    return np.concatenate([col_PE, row_PE], axis=1)


def _embed_init(init, axes):
    return nn.with_logical_partitioning(init, axes)


def _encode(config: VisionConfig, x_NPD: jax.Array) -> jax.Array:
    """Embedding dropout, then the shared encoder over every token (no padding)."""
    cfg = config.stack
    x_NPD = nn.Dropout(cfg.dropout_rate, deterministic=cfg.deterministic)(x_NPD)
    N, P = x_NPD.shape[:2]
    seg_NP = jnp.ones((N, P), jnp.int32)
    pos_NP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (N, P))
    return Encoder(cfg, name="encoder")(x_NPD, seg_NP, pos_NP)


def _patch_embed(c: VisionConfig, x_NHWC: jax.Array) -> jax.Array:
    """Pixels [N, H, W, C] -> patch tokens [N, G, G, D] by the configured stem."""
    cfg, p, D = c.stack, c.patch_size, c.stack.d_model

    def conv(width, k, stride, name):
        return nn.Conv(
            width,
            kernel_size=(k, k),
            strides=(stride, stride),
            padding="VALID" if k == stride else ((k // 2, k // 2), (k // 2, k // 2)),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=_embed_init(nn.initializers.lecun_normal(), (None, None, None, "embed")),
            bias_init=_embed_init(nn.initializers.zeros, ("embed",)),
            name=name,
        )

    if c.stem == "patch":
        return conv(D, p, p, "patch_embed")(x_NHWC)
    steps = p.bit_length() - 1  # log2(p) stride-2 convolutions
    for i in range(steps):
        width = max(D >> (steps - 1 - i), 8)
        x_NHWC = nn.gelu(conv(width, 3, 2, f"stem_{i}")(x_NHWC), approximate=False)
    for i in range(c.stem_extra):  # 3 x 3 stride-1: each token sees 2 px further per side
        x_NHWC = nn.gelu(conv(width, 3, 1, f"stem_extra_{i}")(x_NHWC), approximate=False)
    return conv(D, 1, 1, "stem_out")(x_NHWC)


class ImageEncoder(nn.Module):
    """ViT: p x p patches by a strided convolution (or a small convolutional stem, see
    `VisionConfig.stem`), optional [CLS] in front, positions, then the encoder stack
    (pre-LN, with its own final norm)."""

    config: VisionConfig

    @nn.compact
    def __call__(self, pixels_NHWC: jax.Array) -> jax.Array:
        c, cfg = self.config, self.config.stack
        S, p, D = c.image_size, c.patch_size, cfg.d_model
        if pixels_NHWC.shape[1:] != (S, S, c.channels):
            raise ValueError(
                f"images of shape {pixels_NHWC.shape[1:]}, the encoder expects {(S, S, c.channels)}"
            )
        x_NGGD = _patch_embed(c, pixels_NHWC.astype(cfg.dtype))
        N = x_NGGD.shape[0]
        x_NPD = x_NGGD.reshape(N, c.num_patches, D)  # row-major patches, as ViT flattens
        if c.cls_token:
            cls_11D = self.param(
                "cls",
                _embed_init(nn.initializers.normal(0.02), (None, None, "embed")),
                (1, 1, D),
                cfg.param_dtype,
            )
            cls_N1D = jnp.broadcast_to(jnp.asarray(cls_11D, cfg.dtype), (N, 1, D))
            x_NPD = jnp.concatenate([cls_N1D, x_NPD], axis=1)
        if c.positions == "learned":
            pos_PD = self.param(
                "positions",
                _embed_init(nn.initializers.normal(0.02), (None, "embed")),
                (c.image_tokens, D),
                cfg.param_dtype,
            )
        else:  # fixed, a constant of the compiled program; the [CLS] row is zeros (MAE)
            pos_PD = sincos_2d(S // p, D)
            if c.cls_token:
                pos_PD = np.concatenate([np.zeros((1, D), np.float32), pos_PD])
        x_NPD = x_NPD + jnp.asarray(pos_PD, cfg.dtype)[None]  # explicit batch axis
        return _encode(c, x_NPD)


class TubeletEncoder(nn.Module):
    """ViViT's tubelets: t x p x p blocks of a clip by a strided 3-D convolution, positions,
    then the encoder stack. Tokens run time-major: token t * G * G + r * G + c.

    "sincos2d" positions are the sum of the 2-D table over the patch grid and a 1-D
    table over the T tubelet steps (both of width D, so D must be divisible by 4).
    `config.cls_token` does not apply here (video_tokens counts no [CLS]).
    """

    config: VisionConfig

    @nn.compact
    def __call__(self, frames_NFHWC: jax.Array) -> jax.Array:
        c, cfg = self.config, self.config.stack
        S, p, t, D = c.image_size, c.patch_size, c.tubelet_frames, cfg.d_model
        want = (c.num_frames, S, S, c.channels)
        if frames_NFHWC.shape[1:] != want:
            raise ValueError(f"clips of shape {frames_NFHWC.shape[1:]}, the encoder expects {want}")
        if c.stem == "patch":
            x_NTGGD = nn.Conv(
                D,
                kernel_size=(t, p, p),
                strides=(t, p, p),
                padding="VALID",
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=_embed_init(
                    nn.initializers.lecun_normal(), (None, None, None, None, "embed")
                ),
                bias_init=_embed_init(nn.initializers.zeros, ("embed",)),
                name="tubelet_embed",
            )(frames_NFHWC.astype(cfg.dtype))
        else:  # the image stem on every frame, then t frames' tokens merged (a t x 1 x 1 conv)
            N, F = frames_NFHWC.shape[:2]
            x_FGGD = _patch_embed(c, frames_NFHWC.reshape((N * F,) + want[1:]).astype(cfg.dtype))
            G = x_FGGD.shape[1]
            x_NTGGtD = x_FGGD.reshape(N, F // t, t, G, G, D).transpose(0, 1, 3, 4, 2, 5)
            x_NTGGD = nn.Dense(
                D,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=_embed_init(nn.initializers.lecun_normal(), (None, "embed")),
                bias_init=_embed_init(nn.initializers.zeros, ("embed",)),
                name="tubelet_merge",
            )(x_NTGGtD.reshape(N, F // t, G, G, t * D))
        N = x_NTGGD.shape[0]
        x_NPD = x_NTGGD.reshape(N, c.video_tokens, D)
        if c.positions == "learned":
            pos_PD = self.param(
                "positions",
                _embed_init(nn.initializers.normal(0.02), (None, "embed")),
                (c.video_tokens, D),
                cfg.param_dtype,
            )
        else:
            steps = c.num_frames // t
            space_GD = sincos_2d(S // p, D)  # [G*G, D]
            time_TD = sincos_1d(steps, D)
            pos_PD = (time_TD[:, None, :] + space_GD[None, :, :]).reshape(c.video_tokens, D)
        x_NPD = x_NPD + jnp.asarray(pos_PD, cfg.dtype)[None]
        return _encode(c, x_NPD)
