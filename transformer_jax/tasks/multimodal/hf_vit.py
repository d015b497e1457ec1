"""A Hugging Face ViT (ViTModel or ViTForImageClassification) as ImageEncoder parameters.

    config, params = import_vit("google-vit-folder")   # config.json + model.safetensors
    tokens_NPD = ImageEncoder(config).apply({"params": params}, pixels_NHWC)

The result equals the Hub model's `last_hidden_state` (pixels NHWC here, NCHW there):
[CLS] + row-major patches, learned positions (the table includes the [CLS] row), pre-LN
layers and the final `layernorm` as the encoder's `final_norm`. The pooler, the
classifier and a mask token are not imported. `qkv_bias: false` imports zero q/k/v
biases (the same function).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from transformer_jax.convert.params import Entry, convert_entries, param_shapes
from transformer_jax.convert.safetensors_io import read_json, read_safetensors_dir
from transformer_jax.tasks.multimodal.media_config import VisionConfig, encoder_stack
from transformer_jax.tasks.multimodal.vision import ImageEncoder

# transformers' activation names -> ours (exact GELU, or its tanh approximation).
_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_keep = lambda w: w  # noqa: E731


def _int(hf: dict[str, Any], key: str, default: Any = ...) -> int:
    value = hf.get(key, default)
    if value is ...:
        raise ValueError(f"config.json has no {key}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.json: unsupported {key}={value!r} (need a positive integer)")
    return value


def _float(hf: dict[str, Any], key: str, default: float) -> float:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"config.json: unsupported {key}={value!r} (need a number >= 0)")
    return float(value)


def vision_config(hf: dict[str, Any]) -> VisionConfig:
    """The ImageEncoder config of a ViT config.json; one-line ValueError naming the key."""
    if hf.get("model_type") != "vit":
        raise ValueError(
            f"config.json: unsupported model_type={hf.get('model_type')!r} (need 'vit')"
        )
    act = hf.get("hidden_act", "gelu")
    if act not in _ACT:
        raise ValueError(
            f"config.json: unsupported hidden_act={act!r} (choose one of {sorted(_ACT)})"
        )
    if not isinstance(hf.get("qkv_bias", True), bool):
        raise ValueError(f"config.json: unsupported qkv_bias={hf['qkv_bias']!r} (need true/false)")
    D, N = _int(hf, "hidden_size"), _int(hf, "num_attention_heads")
    size, patch = _int(hf, "image_size"), _int(hf, "patch_size")
    if size % patch:
        raise ValueError(f"config.json: image_size={size} is not a multiple of patch_size={patch}")
    head_dim = hf.get("head_dim") or None
    if head_dim is None and D % N:
        raise ValueError(
            f"config.json: hidden_size={D} is not a multiple of num_attention_heads={N}"
        )
    if head_dim is not None:
        head_dim = _int(hf, "head_dim")
    dropout = _float(hf, "hidden_dropout_prob", 0.0)
    if dropout >= 1:
        raise ValueError(f"config.json: unsupported hidden_dropout_prob={dropout!r} (need < 1)")
    stack = encoder_stack(
        d_model=D,
        num_heads=N,
        head_dim=head_dim,
        d_ff=_int(hf, "intermediate_size"),
        num_encoder_layers=_int(hf, "num_hidden_layers"),
        activation=_ACT[act],
        layer_norm_eps=_float(hf, "layer_norm_eps", 1e-12),
        dropout_rate=dropout,
    )
    return VisionConfig(
        stack=stack,
        image_size=size,
        patch_size=patch,
        channels=_int(hf, "num_channels", 3),
        positions="learned",
        cls_token=True,
    )


def _entries(prefix: str, config: VisionConfig) -> list[Entry]:
    """(Hub name, our path, Hub shape, to ours, to Hub) for every imported tensor."""
    s = config.stack
    D, N, H, F = s.d_model, s.num_heads, s.dim_per_head, s.d_ff
    p, C = config.patch_size, config.channels
    e = f"{prefix}embeddings."
    # torch Conv2d weight [D, C, p, p] <-> Flax Conv kernel [p, p, C, D].
    conv = (lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))
    out: list[Entry] = [
        (f"{e}patch_embeddings.projection.weight", ("patch_embed", "kernel"), (D, C, p, p), *conv),
        (f"{e}patch_embeddings.projection.bias", ("patch_embed", "bias"), (D,), _keep, _keep),
        (f"{e}cls_token", ("cls",), (1, 1, D), _keep, _keep),
        (
            f"{e}position_embeddings",
            ("positions",),
            (1, config.image_tokens, D),
            lambda w: w[0],
            lambda w: w[None],
        ),
    ]
    # torch Linear weight [out, in]; our projections keep heads apart: q/k/v [D, N, H],
    # out [N, H, D], biases [N, H].
    qkv = (lambda w: w.T.reshape(D, N, H), lambda k: k.reshape(D, N * H).T)
    qkv_bias = (lambda b: b.reshape(N, H), lambda b: b.reshape(N * H))
    o = (lambda w: w.T.reshape(N, H, D), lambda k: k.reshape(N * H, D).T)
    linear = (lambda w: w.T, lambda k: k.T)

    def norm(hf: str, ours: tuple[str, ...]) -> None:
        out.append((f"{hf}.weight", ours + ("scale",), (D,), _keep, _keep))
        out.append((f"{hf}.bias", ours + ("bias",), (D,), _keep, _keep))

    for i in range(s.num_encoder_layers):
        hf, ours = f"{prefix}encoder.layer.{i}.", ("encoder", f"layer_{i}")
        att = ours + ("self_attention",)
        for name in ("query", "key", "value"):
            w = f"{hf}attention.attention.{name}"
            out.append((f"{w}.weight", att + (name, "kernel"), (N * H, D), *qkv))
            out.append((f"{w}.bias", att + (name, "bias"), (N * H,), *qkv_bias))
        w = f"{hf}attention.output.dense"
        out.append((f"{w}.weight", att + ("out", "kernel"), (D, N * H), *o))
        out.append((f"{w}.bias", att + ("out", "bias"), (D,), _keep, _keep))
        out.append(
            (f"{hf}intermediate.dense.weight", ours + ("mlp", "wi", "kernel"), (F, D), *linear)
        )
        out.append(
            (f"{hf}intermediate.dense.bias", ours + ("mlp", "wi", "bias"), (F,), _keep, _keep)
        )
        out.append((f"{hf}output.dense.weight", ours + ("mlp", "wo", "kernel"), (D, F), *linear))
        out.append((f"{hf}output.dense.bias", ours + ("mlp", "wo", "bias"), (D,), _keep, _keep))
        norm(f"{hf}layernorm_before", ours + ("attention_block", "norm"))
        norm(f"{hf}layernorm_after", ours + ("mlp_block", "norm"))
    norm(f"{prefix}layernorm", ("encoder", "final_norm"))
    return out


def import_vit(src_dir: str) -> tuple[VisionConfig, dict[str, Any]]:
    """(VisionConfig, float32 NumPy params of ImageEncoder) from a ViT Hub folder."""
    hf = read_json(src_dir, "config.json")
    if not isinstance(hf, dict):
        raise ValueError("config.json must hold a JSON object")
    config = vision_config(hf)
    weights = read_safetensors_dir(src_dir)
    # ViTForImageClassification keeps the encoder under "vit."; ViTModel has no prefix.
    prefix = "vit." if any(k.startswith("vit.") for k in weights) else ""
    entries = _entries(prefix, config)
    if not hf.get("qkv_bias", True):  # no q/k/v biases: zeros compute the same
        for name, _, shape, *_ in entries:
            if name.endswith(("query.bias", "key.bias", "value.bias")):
                weights.setdefault(name, np.zeros(shape, np.float32))
    ignored = {
        f"{prefix}embeddings.mask_token",
        f"{prefix}pooler.dense.weight",
        f"{prefix}pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    S, C = config.image_size, config.channels
    expected = param_shapes(ImageEncoder(config), jnp.zeros((1, S, S, C), jnp.float32))
    return config, convert_entries(weights, entries, ignored, expected)
