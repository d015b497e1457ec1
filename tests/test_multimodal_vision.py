"""Image/video encoders (shapes, sin-cos tables, patch/tubelet embedding parity with a
NumPy float64 reference) and the import of Hugging Face ViT weights (parity with a small
random transformers ViT saved with safetensors; no download)."""

from __future__ import annotations

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.tasks.multimodal.media_config import VisionConfig, encoder_stack
from transformer_jax.tasks.multimodal.vision import (
    ImageEncoder,
    TubeletEncoder,
    sincos_1d,
    sincos_2d,
)


def _config(layers=1, **kw) -> VisionConfig:
    stack = encoder_stack(d_model=32, num_heads=4, d_ff=64, num_encoder_layers=layers)
    return VisionConfig(stack=stack, **kw)


def _init(model, x):
    params = nn.unbox(model.init(jax.random.key(0), x)["params"])
    return jax.tree.map(np.asarray, params)


def _np_layer_norm(x, scale, bias, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _np_sincos_1d(pos: int, dim: int) -> list[float]:
    half = dim // 2
    w = [10000.0 ** (-k / half) for k in range(half)]
    return [math.sin(pos * wk) for wk in w] + [math.cos(pos * wk) for wk in w]


def _np_sincos_2d(row: int, col: int, dim: int) -> list[float]:
    """MAE: first half from the column (x) coordinate, second half from the row (y)."""
    return _np_sincos_1d(col, dim // 2) + _np_sincos_1d(row, dim // 2)


# -- sin-cos tables -------------------------------------------------------------------


@pytest.mark.parametrize("grid,dim", [(4, 32), (3, 8), (7, 64)])
def test_sincos_2d_matches_float64_formula(grid, dim):
    table = sincos_2d(grid, dim)
    assert table.dtype == np.float32 and table.shape == (grid * grid, dim)
    want = np.array(
        [_np_sincos_2d(r, c, dim) for r in range(grid) for c in range(grid)], np.float64
    )
    np.testing.assert_allclose(table, want, atol=1e-6, rtol=0)
    # Patches differ from each other: the table is not constant along any axis.
    assert len({tuple(np.round(row, 5)) for row in table}) == grid * grid


def test_sincos_1d_matches_float64_formula_and_rejects_odd_widths():
    want = np.array([_np_sincos_1d(p, 10) for p in range(6)])
    np.testing.assert_allclose(sincos_1d(6, 10), want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="even"):
        sincos_1d(4, 7)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 6)


# -- shapes and parameter trees -------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "sincos2d"])
@pytest.mark.parametrize("cls_token", [False, True])
def test_image_encoder_shapes_and_params(positions, cls_token):
    config = _config(positions=positions, cls_token=cls_token)
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    model = ImageEncoder(config)
    params = _init(model, x)
    out = model.apply({"params": params}, x)
    assert out.shape == (3, config.image_tokens, 32) == (3, 16 + cls_token, 32)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert params["patch_embed"]["kernel"].shape == (8, 8, 3, 32)
    assert ("positions" in params) == (positions == "learned")
    assert ("cls" in params) == cls_token
    assert "layer_0" in params["encoder"]
    if positions == "learned":
        assert params["positions"].shape == (config.image_tokens, 32)
    with pytest.raises(ValueError, match="expects"):
        model.apply({"params": params}, x[:, :16])


@pytest.mark.parametrize("positions", ["learned", "sincos2d"])
def test_tubelet_encoder_shapes_and_params(positions):
    config = _config(positions=positions, video_mode="tubelets", num_frames=4, tubelet_frames=2)
    x = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    model = TubeletEncoder(config)
    params = _init(model, x)
    out = model.apply({"params": params}, x)
    assert out.shape == (2, config.video_tokens, 32) == (2, 2 * 16, 32)
    assert params["tubelet_embed"]["kernel"].shape == (2, 8, 8, 3, 32)
    assert ("positions" in params) == (positions == "learned")


# -- embedding parity with NumPy float64 ------------------------------------------------


def _np_tubelets(x, t, p):
    """[N, F, S, S, C] -> [N, (F/t) * G * G, t * p * p * C], time-major, row-major patches."""
    N, F, S, _, C = x.shape
    G = S // p
    x = x.reshape(N, F // t, t, G, p, G, p, C).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(N, (F // t) * G * G, t * p * p * C)


@pytest.mark.parametrize(
    "frames,t,size,p,positions",
    [
        (4, 4, 16, 16, "learned"),  # one tubelet = the whole clip: a dense projection
        (4, 4, 16, 16, "sincos2d"),
        (4, 2, 16, 8, "learned"),  # several tubelets: their order
        (6, 3, 16, 4, "sincos2d"),
    ],
)
def test_tubelet_encoder_is_a_projection_of_flattened_tubelets(frames, t, size, p, positions):
    """Without layers the encoder is final_norm(tubelet @ W + b + positions)."""
    config = _config(
        layers=0,
        image_size=size,
        patch_size=p,
        positions=positions,
        video_mode="tubelets",
        num_frames=frames,
        tubelet_frames=t,
    )
    x = np.random.default_rng(0).normal(size=(2, frames, size, size, 3)).astype(np.float32)
    model = TubeletEncoder(config)
    params = _init(model, x)
    out = np.asarray(model.apply({"params": params}, x))
    kernel = params["tubelet_embed"]["kernel"].astype(np.float64)  # [t, p, p, C, D]
    proj = np.einsum(
        "npk,kd->npd", _np_tubelets(x.astype(np.float64), t, p), kernel.reshape(-1, 32)
    )
    proj += params["tubelet_embed"]["bias"]
    if positions == "learned":
        pos = params["positions"]
    else:  # time (1-D) + space (2-D), written out from the float64 formulas
        G = size // p
        pos = np.array(
            [
                np.add(_np_sincos_1d(s, 32), _np_sincos_2d(r, c, 32))
                for s in range(frames // t)
                for r in range(G)
                for c in range(G)
            ]
        )
    norm = params["encoder"]["final_norm"]
    want = _np_layer_norm(proj + pos[None], norm["scale"], norm["bias"], 1e-6)
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("positions", ["learned", "sincos2d"])
def test_image_encoder_is_a_projection_of_flattened_patches(positions):
    config = _config(layers=0, positions=positions, cls_token=True)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    model = ImageEncoder(config)
    params = _init(model, x)
    out = np.asarray(model.apply({"params": params}, x))
    patches = _np_tubelets(x[:, None].astype(np.float64), 1, 8)
    proj = patches @ params["patch_embed"]["kernel"].reshape(-1, 32).astype(np.float64)
    proj += params["patch_embed"]["bias"]
    cls = np.broadcast_to(params["cls"].astype(np.float64), (2, 1, 32))
    tokens = np.concatenate([cls, proj], axis=1)
    if positions == "learned":
        pos = params["positions"]
    else:  # the [CLS] row is zeros
        pos = np.array([[0.0] * 32] + [_np_sincos_2d(r, c, 32) for r in range(4) for c in range(4)])
    norm = params["encoder"]["final_norm"]
    want = _np_layer_norm(tokens + pos[None], norm["scale"], norm["bias"], 1e-6)
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def _np_conv_s2(x, kernel, bias, stride=2):
    """float64 3 x 3 convolution (stride 2 or 1), one pixel of zero padding: [N, H, W, C]
    -> [N, H/stride, W/stride, O], written out as a sum over the kernel's nine offsets."""
    N, H, W, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((N, H // stride, W // stride, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i : i + H : stride, j : j + W : stride, :] @ kernel[i, j].astype(
                np.float64
            )
    return out + bias


def _np_gelu(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / math.sqrt(2.0)))


def _np_conv_stem(x, params, extra=0):
    """Two stride-2 3 x 3 convolutions with exact GELU, `extra` stride-1 ones, then a
    1 x 1 one (patch size 4)."""
    for name in ("stem_0", "stem_1"):
        x = _np_gelu(_np_conv_s2(x, params[name]["kernel"], params[name]["bias"]))
    for i in range(extra):
        p = params[f"stem_extra_{i}"]
        x = _np_gelu(_np_conv_s2(x, p["kernel"], p["bias"], stride=1))
    out = params["stem_out"]
    return x @ out["kernel"][0, 0].astype(np.float64) + out["bias"]


def test_conv_stem_image_encoder_matches_float64_reference():
    config = _config(layers=0, patch_size=4, stem="conv")
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    model = ImageEncoder(config)
    params = _init(model, x)
    assert params["stem_0"]["kernel"].shape == (3, 3, 3, 16)
    assert params["stem_1"]["kernel"].shape == (3, 3, 16, 32)
    assert "patch_embed" not in params
    out = np.asarray(model.apply({"params": params}, x))
    tokens = _np_conv_stem(x.astype(np.float64), params).reshape(2, 64, 32)
    norm = params["encoder"]["final_norm"]
    want = _np_layer_norm(tokens + params["positions"][None], norm["scale"], norm["bias"], 1e-6)
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def test_conv_stem_extra_stride_1_convolutions_match_float64_reference():
    config = _config(layers=0, patch_size=4, stem="conv", stem_extra=2)
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
    model = ImageEncoder(config)
    params = _init(model, x)
    assert params["stem_extra_1"]["kernel"].shape == (3, 3, 32, 32)
    out = np.asarray(model.apply({"params": params}, x))
    tokens = _np_conv_stem(x.astype(np.float64), params, extra=2).reshape(2, 64, 32)
    norm = params["encoder"]["final_norm"]
    want = _np_layer_norm(tokens + params["positions"][None], norm["scale"], norm["bias"], 1e-6)
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def test_stem_extra_needs_the_conv_stem():
    with pytest.raises(ValueError, match="stem_extra"):
        _config(stem="patch", stem_extra=1)


def test_conv_stem_tubelets_merge_t_frames_of_the_image_stem():
    """Tubelet token (s, r, c) = the stems of frames s*t .. s*t+t-1 at (r, c), concatenated
    frame-major and projected."""
    config = _config(
        layers=0, patch_size=4, stem="conv", video_mode="tubelets", num_frames=4, tubelet_frames=2
    )
    x = np.random.default_rng(3).normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
    model = TubeletEncoder(config)
    params = _init(model, x)
    out = np.asarray(model.apply({"params": params}, x))
    frames = _np_conv_stem(x.reshape(8, 32, 32, 3).astype(np.float64), params)  # [8, 8, 8, D]
    frames = frames.reshape(2, 2, 2, 8, 8, 32)  # [N, T, t, G, G, D]
    stacked = np.concatenate([frames[:, :, 0], frames[:, :, 1]], axis=-1)  # [N, T, G, G, 2D]
    merge = params["tubelet_merge"]
    tokens = (stacked @ merge["kernel"].astype(np.float64) + merge["bias"]).reshape(2, 128, 32)
    norm = params["encoder"]["final_norm"]
    want = _np_layer_norm(tokens + params["positions"][None], norm["scale"], norm["bias"], 1e-6)
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def test_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(ValueError, match="power of two"):
        _config(image_size=24, patch_size=6, stem="conv")


# -- Hugging Face ViT import ------------------------------------------------------------

HF_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
)


def _save_vit(path, cls_name="ViTModel", **overrides):
    """A random transformers ViT, every parameter perturbed (norms and biases too)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(transformers.ViTConfig(**{**HF_VIT, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(path, safe_serialization=True)
    return model


def _hf_hidden(model, pixels_NHWC):
    import torch

    pixel_values = torch.from_numpy(pixels_NHWC.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        if hasattr(model, "vit"):
            model = model.vit
        return model(pixel_values=pixel_values).last_hidden_state.numpy()


@pytest.mark.parametrize(
    "cls_name,overrides",
    [
        ("ViTModel", {}),
        ("ViTForImageClassification", {"num_labels": 3}),
        ("ViTModel", {"qkv_bias": False, "layer_norm_eps": 1e-6}),
    ],
)
def test_import_vit_matches_transformers(tmp_path, cls_name, overrides):
    from transformer_jax.tasks.multimodal.hf_vit import import_vit

    hf_model = _save_vit(tmp_path, cls_name, **overrides)
    config, params = import_vit(str(tmp_path))
    assert config.cls_token and config.positions == "learned"
    assert (config.image_size, config.patch_size, config.image_tokens) == (32, 8, 17)
    assert config.stack.layer_norm_eps == overrides.get("layer_norm_eps", 1e-12)
    pixels = np.random.default_rng(2).uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(ImageEncoder(config).apply)({"params": params}, pixels))
    want = _hf_hidden(hf_model, pixels)
    assert ours.shape == want.shape == (2, 17, 64)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)


def _edit_config(path, **changes):
    name = os.path.join(path, "config.json")
    with open(name) as f:
        hf = json.load(f)
    hf.update(changes)
    with open(name, "w") as f:
        json.dump(hf, f)


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"image_size": 30}, "image_size"),
        ({"num_channels": 0}, "num_channels"),
        ({"model_type": "deit"}, "model_type"),
        ({"num_hidden_layers": 3}, "encoder.layer.2"),  # weights lack a layer
        ({"hidden_size": 32}, "config.json implies"),  # weights do not fit the config
    ],
)
def test_import_vit_rejects_bad_configs_in_one_line(tmp_path, changes, key):
    from transformer_jax.tasks.multimodal.hf_vit import import_vit

    _save_vit(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError) as err:
        import_vit(str(tmp_path))
    assert key in str(err.value) and "\n" not in str(err.value), str(err.value)
