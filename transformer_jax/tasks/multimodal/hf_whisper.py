"""Hugging Face Whisper encoder weights -> `AudioEncoder` parameters.

    cfg, params = import_whisper_encoder("whisper-tiny")    # config.json + model.safetensors
    tokens, mask = AudioEncoder(cfg).apply({"params": params}, mel, frame_mask)

Reads the encoder of a `WhisperModel` / `WhisperForConditionalGeneration` checkpoint
(tensors under `encoder.` / `model.encoder.`) or of a bare `WhisperEncoder`; every other
tensor (the decoder, heads) is ignored. Pickle files are never loaded.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from transformer_jax.convert.params import (
    Entry,
    convert_entries,
    flatten,
    param_shapes,
    set_path,
)
from transformer_jax.convert.safetensors_io import read_json, read_safetensors_dir
from transformer_jax.tasks.multimodal.audio import AudioEncoder
from transformer_jax.tasks.multimodal.media_config import HOP_LENGTH, AudioConfig, encoder_stack

__all__ = ["import_whisper_encoder", "whisper_audio_config"]

_PREFIXES = ("model.encoder.", "encoder.")
_keep = (lambda w: w, lambda w: w)
_linear = (lambda w: w.T, lambda w: w.T)
# torch Conv1d weight [out, in, k] <-> Flax nn.Conv kernel [k, in, out].
_conv = (lambda w: w.transpose(2, 1, 0), lambda k: k.transpose(2, 1, 0))


def _int(hf: dict[str, Any], key: str) -> int:
    value = hf.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json: unsupported {key}={value!r} (need a positive integer)")
    return value


def whisper_audio_config(hf: dict[str, Any]) -> AudioConfig:
    """Our `AudioConfig` for a Whisper config.json (its encoder half)."""
    act = hf.get("activation_function", "gelu")
    if act != "gelu":
        raise ValueError(f"config.json: unsupported activation_function={act!r} (need 'gelu')")
    D, N = _int(hf, "d_model"), _int(hf, "encoder_attention_heads")
    if D % N:
        raise ValueError(f"config.json: encoder_attention_heads={N} must divide d_model={D}")
    positions = _int(hf, "max_source_positions")
    stack = encoder_stack(
        d_model=D,
        num_heads=N,
        d_ff=_int(hf, "encoder_ffn_dim"),
        num_encoder_layers=_int(hf, "encoder_layers"),
        layer_norm_eps=1e-5,  # torch.nn.LayerNorm's default, which Whisper keeps
    )
    return AudioConfig(
        stack=stack,
        n_mels=_int(hf, "num_mel_bins"),
        # Whisper's 30 s window: 2 frames per position, HOP_LENGTH samples per frame.
        max_samples=positions * 2 * HOP_LENGTH,
        max_positions=positions,
    )


def _entries(cfg: AudioConfig) -> list[Entry]:
    """(HF name without the encoder prefix, our path, HF shape, to ours, to HF)."""
    s = cfg.stack
    D, N, F, M = s.d_model, s.num_heads, s.d_ff, cfg.n_mels
    H = D // N
    out: list[Entry] = [
        ("conv1.weight", ("conv1", "kernel"), (D, M, 3), *_conv),
        ("conv1.bias", ("conv1", "bias"), (D,), *_keep),
        ("conv2.weight", ("conv2", "kernel"), (D, D, 3), *_conv),
        ("conv2.bias", ("conv2", "bias"), (D,), *_keep),
        ("embed_positions.weight", ("positions",), (cfg.max_positions, D), *_keep),
        ("layer_norm.weight", ("encoder", "final_norm", "scale"), (D,), *_keep),
        ("layer_norm.bias", ("encoder", "final_norm", "bias"), (D,), *_keep),
    ]
    # Projections into heads: torch Linear [N*H, D] <-> our kernel [D, N, H].
    qkv_kernel = (lambda w: w.T.reshape(D, N, H), lambda k: k.reshape(D, N * H).T)
    qkv_bias = (lambda b: b.reshape(N, H), lambda b: b.reshape(N * H))
    out_kernel = (lambda w: w.T.reshape(N, H, D), lambda k: k.reshape(N * H, D).T)
    for i in range(s.num_encoder_layers):
        hf, ours = f"layers.{i}.", ("encoder", f"layer_{i}")
        att = ours + ("self_attention",)
        for name, our_name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            out.append(
                (f"{hf}self_attn.{name}.weight", att + (our_name, "kernel"), (D, D), *qkv_kernel)
            )
            if name != "k_proj":  # Whisper's key projection has no bias
                out.append(
                    (f"{hf}self_attn.{name}.bias", att + (our_name, "bias"), (D,), *qkv_bias)
                )
        out.append((f"{hf}self_attn.out_proj.weight", att + ("out", "kernel"), (D, D), *out_kernel))
        out.append((f"{hf}self_attn.out_proj.bias", att + ("out", "bias"), (D,), *_keep))
        for hf_norm, block in (
            ("self_attn_layer_norm", "attention_block"),
            ("final_layer_norm", "mlp_block"),
        ):
            out.append((f"{hf}{hf_norm}.weight", ours + (block, "norm", "scale"), (D,), *_keep))
            out.append((f"{hf}{hf_norm}.bias", ours + (block, "norm", "bias"), (D,), *_keep))
        for hf_fc, our_fc, shape in (("fc1", "wi", (F, D)), ("fc2", "wo", (D, F))):
            out.append((f"{hf}{hf_fc}.weight", ours + ("mlp", our_fc, "kernel"), shape, *_linear))
            out.append((f"{hf}{hf_fc}.bias", ours + ("mlp", our_fc, "bias"), shape[:1], *_keep))
    return out


def _encoder_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoder's tensors with their prefix removed (none for a bare WhisperEncoder)."""
    for prefix in _PREFIXES:
        if any(name.startswith(prefix + "conv1.") for name in weights):
            return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if "conv1.weight" in weights:
        return dict(weights)
    raise ValueError("the safetensors weights hold no Whisper encoder (no conv1.weight)")


def import_whisper_encoder(src_dir: str) -> tuple[AudioConfig, dict[str, Any]]:
    """(AudioConfig, AudioEncoder params as float32 NumPy) from a Hub Whisper folder."""
    hf = read_json(src_dir, "config.json")
    if not isinstance(hf, dict):
        raise ValueError("config.json must hold a JSON object")
    cfg = whisper_audio_config(hf)
    weights = _encoder_weights(read_safetensors_dir(src_dir))
    F = cfg.num_frames
    expected = param_shapes(
        AudioEncoder(cfg),
        jnp.zeros((1, F, cfg.n_mels), jnp.float32),
        jnp.ones((1, F), jnp.bool_),
    )
    params = convert_entries(weights, _entries(cfg), set(), expected)
    for i in range(cfg.stack.num_encoder_layers):
        path = ("encoder", f"layer_{i}", "self_attention", "key", "bias")
        set_path(params, path, np.zeros(expected[path], np.float32))
    missing = sorted("/".join(p) for p in set(expected) - set(flatten(params)))
    if missing:
        raise ValueError(f"the Whisper import leaves parameters unset: {missing[:3]}")
    return cfg, params
