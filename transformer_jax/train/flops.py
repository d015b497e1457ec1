"""Model FLOPs per step and model FLOPs utilisation (MFU).

Model FLOPs count the matmuls the model needs (2 per multiply-add), forward
plus backward (x3), over the padded shapes the device actually computes; they
exclude rematerialisation, so MFU is comparable across remat policies.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from transformer_jax.nn.config import TransformerConfig

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
}


def encoder_decoder_flops(
    config: TransformerConfig, batch: int, src_len: int, tgt_len: int, training: bool = True
) -> float:
    """Matmul FLOPs of one forward (x3 with training) over [batch, src_len/tgt_len]."""
    D, F, V = config.d_model, config.d_ff, config.output_vocab_size
    NH = config.num_heads * config.dim_per_head
    KH = config.kv_heads * config.dim_per_head
    S, T = src_len, tgt_len
    proj_self = 2 * D * (2 * NH + 2 * KH)  # q, o and k, v per token
    ffn = 2 * 2 * D * F
    enc_tok = proj_self + ffn + 2 * 2 * S * NH  # QK^T and AV against S keys
    dec_tok = (
        proj_self
        + 2 * 2 * T * NH  # causal self-attention (counted dense)
        + 2 * 2 * D * NH
        + 2 * 2 * S * NH  # cross q/o projections, QK^T and AV
        + ffn
    )
    cross_kv_per_src_tok = 2 * 2 * D * KH * config.num_decoder_layers
    fwd = batch * (
        S * (enc_tok * config.num_encoder_layers + cross_kv_per_src_tok)
        + T * (dec_tok * config.num_decoder_layers + 2 * D * V)
    )
    return float(fwd * (3 if training else 1))


@functools.lru_cache(maxsize=1)
def measured_cpu_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n matmul on this host's CPU devices (best of `repeats`)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "") or ""
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak, f"{kind} data sheet"
    if device.platform == "cpu":
        return measured_cpu_peak(), "measured CPU matmul"
    return 0.0, f"unknown device {kind!r}"


def mfu(model_flops_per_step: float, step_seconds: float, num_devices: int, peak: float) -> float:
    if peak <= 0 or step_seconds <= 0:
        return 0.0
    return model_flops_per_step / step_seconds / (num_devices * peak)
