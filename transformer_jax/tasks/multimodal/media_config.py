"""Typed, frozen configs of the media encoders (image, video, audio).

Each encoder turns one medium into a sequence of vectors of its own width
(`stack.d_model`); the multimodal model projects them to the text model's width.
`stack` is the shared `TransformerConfig` of the encoder's Transformer layers
(pre-LN, GELU, biases; `num_encoder_layers` 0 = the patch/stem embedding alone).
"""

from __future__ import annotations

import dataclasses

from transformer_jax.nn.config import TransformerConfig

IMAGE_POSITIONS = ("learned", "sincos2d")
IMAGE_STEMS = ("patch", "conv")
VIDEO_MODES = ("frames", "tubelets")
POOL_MODES = ("mean", "concat")

# Whisper's front end (fixed, not configurable: the imported encoders expect it).
SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms Hann window
HOP_LENGTH = 160  # 10 ms


def encoder_stack(**kw) -> TransformerConfig:
    """A ViT/Whisper-style encoder stack config: pre-LN LayerNorm, exact GELU, biases."""
    defaults = dict(
        vocab_size=1,
        num_decoder_layers=0,
        norm_position="pre",
        activation="gelu",
        attention_bias=True,
        mlp_bias=True,
        scale_embeddings=False,
        position_type="none",
        dropout_rate=0.0,
        layer_norm_eps=1e-6,
    )
    defaults.update(kw)
    return TransformerConfig(**defaults)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Images [N, H, W, C] (normalized pixels) -> patch tokens; video through frames or tubelets."""

    stack: TransformerConfig
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    positions: str = "learned"  # "learned" (table) or "sincos2d" (fixed 2-D sin-cos)
    cls_token: bool = False  # ViT's [CLS] token in front of the patches
    # "patch": ViT's one p x p stride-p convolution; "conv": log2(p) 3 x 3 stride-2
    # convolutions (GELU, widths doubling up to D) and a 1 x 1 one, as Xiao et al. (2021),
    # "Early convolutions help transformers see better": the same token grid, but each
    # token sees past its patch's border and small shapes are learnt much sooner.
    stem: str = "patch"
    # With the conv stem: this many more 3 x 3 stride-1 convolutions at the token grid
    # (each widens a token's view of the pixels by one patch-size step per side).
    stem_extra: int = 0
    # Video: "frames" = each sampled frame through the image path plus a learned time
    # embedding; "tubelets" = t x p x p patches by a 3-D convolution (ViViT).
    video_mode: str = "frames"
    num_frames: int = 8
    tubelet_frames: int = 2
    # Merge each pool x pool block of the encoder's output patch grid into one token
    # before the text model reads it (fewer tokens for the decoder; the encoder still sees
    # every patch). pool_mode "mean" averages the block; "concat" joins its pool * pool
    # vectors (row-major) and lets the projection into the text model mix them, as
    # Qwen2-VL's patch merger does: a token still knows where in its block a feature lay.
    pool: int = 1
    pool_mode: str = "mean"

    def __post_init__(self) -> None:
        def bad(key, value, why):
            raise ValueError(f"model.image.{key}={value!r}: {why}")

        if self.patch_size <= 0 or self.image_size % self.patch_size:
            bad("patch_size", self.patch_size, f"must divide image_size={self.image_size}")
        if self.stem not in IMAGE_STEMS:
            bad("stem", self.stem, f"choose one of {IMAGE_STEMS}")
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            bad("patch_size", self.patch_size, "the conv stem needs a power of two")
        if self.stem_extra < 0 or (self.stem_extra and self.stem != "conv"):
            bad("stem_extra", self.stem_extra, "needs stem='conv' and must be >= 0")
        if self.positions not in IMAGE_POSITIONS:
            bad("positions", self.positions, f"choose one of {IMAGE_POSITIONS}")
        if self.video_mode not in VIDEO_MODES:
            bad("video_mode", self.video_mode, f"choose one of {VIDEO_MODES}")
        if self.num_frames <= 0:
            bad("num_frames", self.num_frames, "must be positive")
        grid = self.image_size // self.patch_size
        if self.pool < 1 or grid % self.pool:
            bad("pool", self.pool, f"must divide the patch grid ({grid} x {grid})")
        if self.pool_mode not in POOL_MODES:
            bad("pool_mode", self.pool_mode, f"choose one of {POOL_MODES}")
        if self.pool > 1 and self.cls_token:
            bad("pool", self.pool, "pooling needs cls_token=False")
        if self.video_mode == "tubelets" and self.num_frames % self.tubelet_frames:
            bad("tubelet_frames", self.tubelet_frames, f"must divide num_frames={self.num_frames}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_tokens(self) -> int:
        return self.num_patches + int(self.cls_token)

    @property
    def video_tokens(self) -> int:
        if self.video_mode == "frames":
            return self.num_frames * self.image_tokens
        return (self.num_frames // self.tubelet_frames) * self.num_patches

    @property
    def image_out_tokens(self) -> int:
        """Tokens per image that the text model reads (after pooling)."""
        return self.num_patches // self.pool**2 + int(self.cls_token)

    @property
    def video_out_tokens(self) -> int:
        """Tokens per clip that the text model reads (after pooling)."""
        return self.video_tokens // self.pool**2


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Waveforms (16 kHz mono) -> Whisper log-mel -> conv stem -> encoder tokens."""

    stack: TransformerConfig
    n_mels: int = 80
    max_samples: int = 16_000  # longest clip, in samples at 16 kHz
    max_positions: int = 1500  # rows of the (sinusoid-initialised) position table

    @property
    def num_frames(self) -> int:
        """Log-mel frames of a `max_samples` clip (Whisper drops the last STFT frame)."""
        return self.max_samples // HOP_LENGTH

    @property
    def audio_tokens(self) -> int:
        """Tokens after the stride-2 stem."""
        return (self.num_frames + 1) // 2
