"""Audio: Whisper's log-mel front end in JAX and the Whisper-style audio encoder.

    mel_BFM, frame_mask_BF = log_mel(wave_BS, lengths_B)       # 16 kHz, 10 ms frames
    tokens_BTD, mask_BT = AudioEncoder(cfg).apply(params, mel_BFM, frame_mask_BF)

The front end computes what transformers' `WhisperFeatureExtractor` computes for a
waveform of S samples (centered STFT, reflect padding at both ends of the array), except
that the log clamp `max(x, max - 8)` takes each row's maximum over its own valid frames,
so a row padded with zeros to the batch length does not depend on the other rows.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.nn.transformer import Encoder
from transformer_jax.tasks.multimodal.media_config import (
    HOP_LENGTH,
    N_FFT,
    SAMPLE_RATE,
    AudioConfig,
)

__all__ = ["AudioEncoder", "log_mel", "mel_filters", "sinusoids"]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    linear = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters over 0..8000 Hz, [N_FFT // 2 + 1, n_mels]
    (as librosa / transformers build Whisper's), computed in float64, returned float32."""
    bins = N_FFT // 2 + 1
    fft_hz = np.linspace(0.0, SAMPLE_RATE // 2, bins)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), n_mels + 2))
    slopes = edges_hz[None, :] - fft_hz[:, None]  # [bins, n_mels + 2]
    widths = np.diff(edges_hz)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (edges_hz[2:] - edges_hz[:-2])[None, :]  # equal area per filter
    out = filters.astype(np.float32)
    out.flags.writeable = False
    return out


def _hann() -> np.ndarray:
    """The periodic Hann window of N_FFT samples (torch.hann_window's default)."""
    n = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)


def log_mel(
    wave_BS: jax.Array, lengths_B: jax.Array, n_mels: int = 80
) -> tuple[jax.Array, jax.Array]:
    """Whisper log-mel features [B, S // 160, n_mels] and the valid frames [B, S // 160].

    `wave_BS` float32 at 16 kHz, zeros past each row's `lengths_B` (samples). Frame f is
    valid iff f < length // 160 (a row of length 0 has none). jit-compatible.
    """
    wave_BS = jnp.asarray(wave_BS, jnp.float32)
    B, S = wave_BS.shape
    F = S // HOP_LENGTH
    half = N_FFT // 2
    # Centered STFT: frame f covers padded[f * 160 : f * 160 + 400]. The STFT has
    # F + 1 frames; Whisper drops the last one.
    padded_BP = jnp.pad(wave_BS, ((0, 0), (half, half)), mode="reflect")
    # Framing without a gather: as 400 = 2 * 160 + 80, frame f is hop-sized chunks f and
    # f + 1 and the first 80 samples of chunk f + 2 (static slices, cheap on any backend).
    chunks_BCH = padded_BP[:, : (F + 2) * HOP_LENGTH].reshape(B, F + 2, HOP_LENGTH)
    rest = N_FFT - 2 * HOP_LENGTH
    frames_BFN = jnp.concatenate(
        [chunks_BCH[:, :F], chunks_BCH[:, 1 : F + 1], chunks_BCH[:, 2 : F + 2, :rest]], axis=-1
    )
    spec_BFK = jnp.fft.rfft(frames_BFN * jnp.asarray(_hann())[None, None, :], n=N_FFT, axis=-1)
    power_BFK = jnp.square(spec_BFK.real) + jnp.square(spec_BFK.imag)
    # HIGHEST: accelerators would otherwise run a float32 matmul in reduced precision,
    # and the log below amplifies the error of the small mel energies.
    mel_BFM = jnp.einsum(
        "bfk,km->bfm",
        power_BFK,
        jnp.asarray(mel_filters(n_mels)),
        precision=jax.lax.Precision.HIGHEST,
    )
    log_BFM = jnp.log10(jnp.maximum(mel_BFM, 1e-10))
    valid_BF = (
        jnp.arange(F, dtype=jnp.int32)[None, :]
        < (jnp.asarray(lengths_B, jnp.int32) // HOP_LENGTH)[:, None]
    )
    # Each row's maximum over its valid frames (-inf for a row without any: no clamp).
    masked_BFM = jnp.where(valid_BF[:, :, None], log_BFM, -jnp.inf)
    row_max_B11 = jnp.max(masked_BFM, axis=(1, 2), keepdims=True, initial=-jnp.inf)
    log_BFM = jnp.maximum(log_BFM, row_max_B11 - 8.0)
    return (log_BFM + 4.0) / 4.0, valid_BF


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table [length, channels]: [sin | cos] over geometric timescales."""
    if channels % 2 or channels < 4:
        raise ValueError(f"sinusoid positions need an even width >= 4, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2, dtype=np.float64))
    scaled = np.arange(length, dtype=np.float64)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class AudioEncoder(nn.Module):
    """Log-mel [B, F, n_mels] + valid frames [B, F] -> tokens [B, (F + 1) // 2, D] + mask.

    Whisper's encoder: conv (k3) + GELU, conv (k3, stride 2) + GELU, plus a position
    table (initialised to sinusoids, trainable), then the shared pre-LN Encoder. Token t
    is valid iff its first frame 2t is; padding tokens are never attended to.
    """

    config: AudioConfig

    @nn.compact
    def __call__(self, mel_BFM: jax.Array, frame_mask_BF: jax.Array):
        cfg = self.config
        stack = cfg.stack
        D = stack.d_model
        conv = functools.partial(
            nn.Conv, D, (3,), padding=1, dtype=stack.dtype, param_dtype=stack.param_dtype
        )
        gelu = functools.partial(nn.gelu, approximate=False)
        x_BFD = gelu(conv(name="conv1")(mel_BFM.astype(stack.dtype)))
        x_BTD = gelu(conv(strides=(2,), name="conv2")(x_BFD))
        T = x_BTD.shape[1]
        if T > cfg.max_positions:
            raise ValueError(
                f"audio of {mel_BFM.shape[1]} frames gives {T} tokens, more than "
                f"max_positions={cfg.max_positions}"
            )
        table = self.param(
            "positions",
            lambda _, shape, dtype: jnp.asarray(sinusoids(*shape), dtype),
            (cfg.max_positions, D),
            stack.param_dtype,
        )
        x_BTD = x_BTD + jnp.asarray(table[None, :T], stack.dtype)
        mask_BT = jnp.asarray(frame_mask_BF, jnp.bool_)[:, ::2]  # frame 2t of token t
        seg_BT = mask_BT.astype(jnp.int32)
        B = x_BTD.shape[0]
        pos_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        return Encoder(stack, name="encoder")(x_BTD, seg_BT, pos_BT), mask_BT
