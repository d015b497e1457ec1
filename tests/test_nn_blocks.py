"""Building blocks of the stacks (positions, RoPE, RMSNorm, token types, gated FFN) vs references.

References: float64 NumPy formulas written here, and Hugging Face transformers' own
PyTorch modules (Llama, GPT-J) built from local configs.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.nn import embed, positions
from transformer_jax.nn.config import TransformerConfig, config_from_json, config_to_json
from transformer_jax.nn.embed import TokenTypeEmbed
from transformer_jax.nn.mlp import FeedForward
from transformer_jax.nn.norms import RMSNorm, make_norm
from transformer_jax.nn.positions import (
    AddPositions,
    LearnedPositions,
    apply_rope,
    rope_inverse_frequencies,
)
from transformer_jax.tasks.translation.model import EncoderDecoder


def tiny(**overrides) -> TransformerConfig:
    base = dict(vocab_size=50, d_model=16, num_heads=2, d_ff=24, max_position=40, dropout_rate=0.0)
    return TransformerConfig(**{**base, **overrides})


def unboxed_params(module: nn.Module, *args) -> dict:
    return nn.unbox(module.init(jax.random.PRNGKey(0), *args)["params"])


def hf():
    """(torch, transformers) or skip."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


# ----------------------------------------------------------------------- positions


def test_sinusoid_table_moved_and_reexported() -> None:
    assert embed.sinusoid_table is positions.sinusoid_table
    pos = np.arange(6)[:, None]
    freq = 10000.0 ** (-np.arange(4) * 2 / 8)
    halves = positions.sinusoid_table(6, 8, "halves")
    np.testing.assert_allclose(halves, np.concatenate([np.sin(pos * freq), np.cos(pos * freq)], 1))


@pytest.mark.parametrize("layout", ["interleaved", "halves"])
def test_add_positions_sinusoid_is_the_translation_encoding(layout: str) -> None:
    cfg = tiny(position_layout=layout)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 16)), jnp.float32)
    pos = jnp.asarray([[0, 1, 2, 3, 4], [3, 0, 1, 39, 60]], jnp.int32)
    module = AddPositions(cfg)
    out = module.apply({}, x, pos)
    np.testing.assert_array_equal(out, embed.add_positions(x, pos, cfg))
    assert not np.allclose(out, x)


def test_learned_positions() -> None:
    cfg = tiny(position_type="learned")
    pos = jnp.asarray([[0, 1, 2], [5, 39, 99]], jnp.int32)
    variables = LearnedPositions(cfg).init(jax.random.PRNGKey(0), pos)
    boxed = variables["params"]["embedding"]
    assert boxed.names == (None, "embed")
    table = np.asarray(nn.unbox(boxed))
    assert table.shape == (40, 16) and 0.01 < table.std() < 0.03
    out = LearnedPositions(cfg).apply(variables, pos)
    np.testing.assert_array_equal(out, table[np.minimum(np.asarray(pos), 39)])
    # AddPositions adds the same table under its "positions" child.
    x = jnp.ones((2, 3, 16))
    added = AddPositions(cfg).apply({"params": {"positions": variables["params"]}}, x, pos)
    np.testing.assert_allclose(added, 1.0 + out)


@pytest.mark.parametrize("position_type", ["rope", "none"])
def test_add_positions_adds_nothing_for_rope_and_none(position_type: str) -> None:
    x = jnp.ones((1, 3, 16))
    variables = AddPositions(tiny(position_type=position_type)).init(
        jax.random.PRNGKey(0), x, jnp.zeros((1, 3), jnp.int32)
    )
    assert not variables
    out = AddPositions(tiny(position_type=position_type)).apply(variables, x, jnp.ones((1, 3), int))
    np.testing.assert_array_equal(out, x)


# ---------------------------------------------------------------------------- RoPE


def rope_numpy(x: np.ndarray, pos: np.ndarray, theta: float, layout: str) -> np.ndarray:
    """float64 RoPE as a complex rotation: pair (a, b) -> (a + ib) * e^(i pos theta^(-2j/H))."""
    x = np.asarray(x, np.float64)
    H = x.shape[-1]
    angle = pos[:, :, None, None].astype(np.float64) * theta ** (-np.arange(H // 2) * 2.0 / H)
    if layout == "halves":
        z = (x[..., : H // 2] + 1j * x[..., H // 2 :]) * np.exp(1j * angle)
        return np.concatenate([z.real, z.imag], axis=-1)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angle)
    return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


def rope_inputs(seed: int = 0, H: int = 16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 7, 3, H)).astype(np.float32)
    # Offsets (cached decoding) and a packed row whose positions restart.
    pos = np.array([[5, 6, 7, 8, 9, 10, 11], [0, 1, 2, 0, 1, 2, 3]], np.int32)
    return x, pos


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_matches_float64_formula(layout: str, theta: float) -> None:
    x, pos = rope_inputs()
    out = apply_rope(jnp.asarray(x), jnp.asarray(pos), theta=theta, layout=layout)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, rope_numpy(x, pos, theta, layout), atol=1e-5, rtol=1e-5)
    assert not np.allclose(out, x, atol=1e-3)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_matches_transformers_llama(theta: float) -> None:
    torch, transformers = hf()
    from transformers.models.llama import modeling_llama

    x, pos = rope_inputs(1)
    k = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    config = transformers.LlamaConfig(
        hidden_size=48, num_attention_heads=3, head_dim=16, rope_theta=theta
    )
    rotary = modeling_llama.LlamaRotaryEmbedding(config)
    q_t = torch.from_numpy(x).transpose(1, 2)  # HF layout [B, N, L, H]
    k_t = torch.from_numpy(k).transpose(1, 2)
    cos, sin = rotary(q_t, torch.from_numpy(pos).long())
    q_hf, k_hf = modeling_llama.apply_rotary_pos_emb(q_t, k_t, cos, sin)
    for inp, theirs in ((x, q_hf), (k, k_hf)):
        out = apply_rope(jnp.asarray(inp), jnp.asarray(pos), theta=theta, layout="halves")
        np.testing.assert_allclose(out, theirs.transpose(1, 2).numpy(), atol=1e-5, rtol=0)


def test_rope_interleaved_matches_transformers_gptj() -> None:
    torch, _ = hf()
    from transformers.models.gptj import modeling_gptj

    x, pos = rope_inputs(3)
    table = modeling_gptj.create_sinusoidal_positions(32, 16)  # [P, H]: [sin | cos]
    sin, cos = torch.split(table[torch.from_numpy(pos).long()], 8, dim=-1)
    theirs = modeling_gptj.apply_rotary_pos_emb(torch.from_numpy(x), sin, cos).numpy()
    out = apply_rope(jnp.asarray(x), jnp.asarray(pos), layout="interleaved")
    np.testing.assert_allclose(out, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_rope_scores_depend_only_on_relative_position(layout: str) -> None:
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.normal(size=(1, 5, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 5, 2, 8)), jnp.float32)
    pos = jnp.arange(5)[None]

    def scores(shift: int) -> np.ndarray:
        q_r = apply_rope(q, pos + shift, layout=layout)
        k_r = apply_rope(k, pos + shift, layout=layout)
        return np.asarray(jnp.einsum("blnh,bmnh->bnlm", q_r, k_r))

    np.testing.assert_allclose(scores(17), scores(0), atol=1e-4)
    # Norms are kept, and the rotation is not the identity.
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rope(q, pos + 3, layout=layout), axis=-1),
        jnp.linalg.norm(q, axis=-1),
        rtol=1e-5,
    )
    assert not np.allclose(scores(0), np.asarray(jnp.einsum("blnh,bmnh->bnlm", q, k)), atol=1e-3)


def test_rope_keeps_dtype_and_checks_inputs() -> None:
    x, pos = rope_inputs()
    out = apply_rope(jnp.asarray(x, jnp.bfloat16), jnp.asarray(pos))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        out.astype(jnp.float32), rope_numpy(x, pos, 1e4, "halves"), atol=3e-2, rtol=2e-2
    )
    np.testing.assert_allclose(rope_inverse_frequencies(4, 100.0), [1.0, 0.1])
    with pytest.raises(ValueError, match="even H"):
        apply_rope(jnp.zeros((1, 2, 1, 7)), jnp.zeros((1, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"positions \(2, 2\) must be \[B, L\]"):
        apply_rope(jnp.zeros((1, 2, 1, 8)), jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="unknown rotary layout 'gptj'"):
        apply_rope(jnp.zeros((1, 2, 1, 8)), jnp.zeros((1, 2), jnp.int32), layout="gptj")


# ------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("magnitude", [3.0, 1e-3])  # 1e-3: eps matters
def test_rmsnorm_matches_float64_and_transformers_llama(magnitude: float) -> None:
    rng = np.random.default_rng(5)
    x = (magnitude * (rng.normal(size=(2, 5, 16)) + 0.5)).astype(np.float32)
    scale = rng.normal(size=16).astype(np.float32)
    cfg = tiny(norm_type="rms", layer_norm_eps=1e-5)
    out = RMSNorm(cfg).apply({"params": {"scale": scale}}, jnp.asarray(x))
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

    torch, _ = hf()
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ref = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(scale))
        theirs = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, theirs, atol=1e-5, rtol=1e-5)


def test_rmsnorm_params_and_dtypes() -> None:
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 3, 16)), jnp.bfloat16)
    cfg = tiny(norm_type="rms", dtype=jnp.bfloat16)
    variables = RMSNorm(cfg).init(jax.random.PRNGKey(0), x)
    assert variables["params"]["scale"].names == ("embed",)
    out = RMSNorm(cfg).apply(variables, x)
    assert out.dtype == jnp.bfloat16
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    expected = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out.astype(jnp.float32), expected, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize(("norm_type", "names"), [("layer", {"scale", "bias"}), ("rms", {"scale"})])
def test_make_norm_follows_config(norm_type: str, names: set) -> None:
    cfg = tiny(norm_type=norm_type)
    x = jnp.asarray(np.random.default_rng(7).normal(size=(1, 4, 16)) + 2.0, jnp.float32)

    class Wrap(nn.Module):
        @nn.compact
        def __call__(self, x):
            return make_norm(cfg, "norm")(x)

    variables = Wrap().init(jax.random.PRNGKey(0), x)
    assert set(variables["params"]["norm"]) == names
    out = np.asarray(Wrap().apply(variables, x), np.float64)
    # LayerNorm centres every row; RMSNorm keeps the mean and makes the mean square 1.
    if norm_type == "layer":
        np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    else:
        assert np.all(out.mean(-1) > 0.5)
        np.testing.assert_allclose((out**2).mean(-1), 1.0, rtol=1e-4)


# ---------------------------------------------------------------------- token types


def test_token_type_embeddings() -> None:
    cfg = tiny(num_token_types=2)
    ids = jnp.asarray([[0, 0, 1, 1], [0, 1, 1, 0]], jnp.int32)
    variables = TokenTypeEmbed(cfg).init(jax.random.PRNGKey(0), ids)
    assert variables["params"]["embedding"].names == (None, "embed")
    table = np.asarray(nn.unbox(variables["params"]["embedding"]))
    assert table.shape == (2, 16) and not np.allclose(table[0], table[1])
    out = TokenTypeEmbed(cfg).apply(variables, ids)
    np.testing.assert_array_equal(out, table[np.asarray(ids)])
    with pytest.raises(ValueError, match="model.num_token_types=0"):
        TokenTypeEmbed(tiny()).init(jax.random.PRNGKey(0), ids)


# ------------------------------------------------------------------ gated feed-forward


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


GATES = {"swiglu": lambda x: x / (1.0 + np.exp(-x)), "geglu": _gelu, "geglu_tanh": _gelu_tanh}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", sorted(GATES))
def test_gated_ffn_matches_float64_formula(activation: str, bias: bool) -> None:
    cfg = tiny(activation=activation, mlp_bias=bias)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    params = unboxed_params(FeedForward(cfg), jnp.asarray(x))
    assert set(params) == {"wi_0", "wi_1", "wo"}
    assert all(("bias" in params[k]) == bias for k in params)
    # Non-zero biases so that every term is exercised.
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    out = FeedForward(cfg).apply({"params": params}, jnp.asarray(x))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def linear(name: str, h: np.ndarray) -> np.ndarray:
        return h @ p[name]["kernel"] + (p[name]["bias"] if bias else 0.0)

    x64 = x.astype(np.float64)
    hidden = GATES[activation](linear("wi_0", x64)) * linear("wi_1", x64)
    np.testing.assert_allclose(out, linear("wo", hidden), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("activation", "hf_act"),
    [("swiglu", "silu"), ("geglu", "gelu"), ("geglu_tanh", "gelu_pytorch_tanh")],
)
def test_gated_ffn_matches_transformers_llama_mlp(activation: str, hf_act: str) -> None:
    torch, transformers = hf()
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = tiny(activation=activation, mlp_bias=False)
    x = np.random.default_rng(9).normal(size=(2, 3, 16)).astype(np.float32)
    params = unboxed_params(FeedForward(cfg), jnp.asarray(x))
    ref = LlamaMLP(
        transformers.LlamaConfig(
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=24,
            hidden_act=hf_act,
            mlp_bias=False,
        )
    )
    with torch.no_grad():
        # torch Linear weights are [out, in]; ours are [in, out].
        for ours, theirs in (("wi_0", ref.gate_proj), ("wi_1", ref.up_proj), ("wo", ref.down_proj)):
            theirs.weight.copy_(torch.from_numpy(np.asarray(params[ours]["kernel"]).T.copy()))
        expected = ref(torch.from_numpy(x)).numpy()
    out = FeedForward(cfg).apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_ungated_ffn_keeps_its_parameters() -> None:
    x = jnp.ones((1, 2, 16))
    params = unboxed_params(FeedForward(tiny()), x)
    assert set(params) == {"wi", "wo"} and "bias" in params["wi"]
    no_bias = unboxed_params(FeedForward(tiny(activation="gelu", mlp_bias=False)), x)
    assert set(no_bias) == {"wi", "wo"} and "bias" not in no_bias["wi"]


# -------------------------------------------------------------------------- LayerScale


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_layer_scale_multiplies_each_residual_branch(norm_position: str) -> None:
    """Residual with LayerScale = x + g * f(LN(x)) (pre) or LN(x + g * f(x)) (post), with g
    a per-channel gain starting at `layer_scale_init`; float64 NumPy reference."""
    from transformer_jax.nn.transformer import Residual

    cfg = tiny(layer_scale_init=0.25, norm_position=norm_position)
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32)

    def f(h):
        return jnp.tanh(h @ w)

    block = Residual(cfg)
    params = unboxed_params(block, x, f)
    assert params["layer_scale"].shape == (16,)
    np.testing.assert_array_equal(params["layer_scale"], np.full(16, 0.25, np.float32))
    gain = np.linspace(0.1, 2.0, 16)  # a gain that training has moved, per channel
    params = {**params, "layer_scale": gain.astype(np.float32)}
    out = np.asarray(block.apply({"params": params}, x, f))

    x64, w64 = x.astype(np.float64), w.astype(np.float64)

    def ln(v):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + cfg.layer_norm_eps)

    if norm_position == "pre":
        want = x64 + gain * np.tanh(ln(x64) @ w64)
    else:
        want = ln(x64 + gain * np.tanh(x64 @ w64))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # Off by default: no parameter, and the branch is added as is.
    plain = Residual(tiny(norm_position=norm_position))
    assert "layer_scale" not in unboxed_params(plain, x, f)


def test_layer_scale_gains_are_not_weight_decayed() -> None:
    from transformer_jax.train.optim import param_kind

    assert param_kind(("decoder", "layer_0", "mlp_block", "layer_scale")) == "norm"
    assert param_kind(("decoder", "layer_0", "mlp", "wo", "kernel")) == "weight"


# -------------------------------------------------------------------------- config


def test_new_config_fields_default_to_todays_model() -> None:
    cfg = TransformerConfig()
    assert (cfg.norm_type, cfg.position_type, cfg.num_token_types) == ("layer", "sinusoid", 0)
    assert cfg.rope_theta == 10000.0 and cfg.mlp_bias
    blob = config_to_json(tiny(norm_type="rms", position_type="rope", rope_theta=5e5))
    assert config_from_json(blob) == tiny(norm_type="rms", position_type="rope", rope_theta=5e5)
    # A config saved before these fields existed loads with the defaults.
    old = {k: v for k, v in config_to_json(tiny()).items() if k not in ("norm_type", "mlp_bias")}
    assert config_from_json(old) == tiny()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(norm_type="batch"), r"model.norm_type='batch': choose one of \('layer', 'rms'\)"),
        (dict(position_type="alibi"), "model.position_type='alibi': choose one of"),
        (dict(rope_theta=0.0), "model.rope_theta=0.0: must be positive"),
        (dict(position_type="rope", head_dim=7), "model.head_dim=7: must be even for rotary"),
        (dict(num_token_types=-1), "model.num_token_types=-1: must be >= 0"),
        (dict(activation="reglu"), "model.activation='reglu': choose one of"),
        (dict(layer_scale_init=-0.1), "model.layer_scale_init=-0.1: must be >= 0"),
    ],
)
def test_config_rejects_bad_values(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(norm_type="rms"), "model.norm_type='rms': the translation model supports only"),
        (dict(position_type="rope"), "model.position_type='rope': the translation model"),
        (dict(num_token_types=2), "model.num_token_types=2: the translation model has no"),
    ],
)
def test_translation_model_refuses_blocks_it_does_not_build(changes: dict, match: str) -> None:
    cfg = tiny(num_encoder_layers=1, num_decoder_layers=1, **changes)
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: EncoderDecoder(cfg).init(jax.random.PRNGKey(0), ids, ids))


@pytest.mark.parametrize("batch,length", [(4, 40), (2, 3)])
def test_tied_logits_value_and_gradients_match_numpy(batch, length) -> None:
    # 160 tokens against d_model 16: the table's gradient is computed transposed (CPU);
    # 6 tokens: the plain einsum. Both against the closed form in float64.
    cfg = tiny()
    emb = embed.Embed(50, cfg)
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, length, cfg.d_model)).astype(np.float32)
    w = rng.normal(size=(batch, length, 50)).astype(np.float32)  # d loss / d logits
    params = unboxed_params(emb, jnp.zeros((1, 1), jnp.int32))
    table = np.asarray(params["embedding"], np.float64)

    def loss(params, x):
        logits = emb.apply({"params": params}, x, method=embed.Embed.attend)
        return jnp.sum(logits * w), logits

    (_, logits), (d_params, dx) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        params, jnp.asarray(x)
    )
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    np.testing.assert_allclose(np.asarray(logits), x64 @ table.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), w64 @ table, rtol=1e-5, atol=1e-5)
    want = np.einsum("blv,bld->vd", w64, x64)
    np.testing.assert_allclose(np.asarray(d_params["embedding"]), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,features,in_features", [
    ("query", (2, 8), None),  # [D] -> [N, H], the kernel [D, N, H]
    ("out", (16,), (2, 8)),  # [N, H] -> [D], the kernel [N, H, D]
])  # fmt: skip
@pytest.mark.parametrize("decode", [False, True])
def test_projection_value_and_gradients_match_numpy(name, features, in_features, decode) -> None:
    # Training on a CPU computes the kernel's gradient as x^T times d (`_project_grad_in_
    # layout`); decoding uses the plain product. Both against the closed form in float64.
    from transformer_jax.nn.attention import _proj

    cfg = tiny(attention_bias=True, decode=decode)
    proj = _proj(features, ("a", "b", "c")[: 1 + len(features)], cfg, name, in_features)
    rng = np.random.default_rng(len(features))
    in_shape = (3, 5) + (in_features or (cfg.d_model,))
    x = rng.normal(size=in_shape).astype(np.float32)
    params = unboxed_params(proj, jnp.asarray(x))
    w = rng.normal(size=(3, 5) + features).astype(np.float32)  # d loss / d output

    def loss(params, x):
        y = proj.apply({"params": params}, x)
        return jnp.sum(y * w), y

    (_, y), (d_params, dx) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        params, jnp.asarray(x)
    )
    n_in = len(in_shape) - 2
    k64 = np.asarray(params["kernel"], np.float64)
    x2 = x.astype(np.float64).reshape(15, -1)
    w2 = w.astype(np.float64).reshape(15, -1)
    k2 = k64.reshape(x2.shape[1], -1)
    want_y = (x2 @ k2 + np.asarray(params["bias"], np.float64).reshape(-1)).reshape(y.shape)
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), (w2 @ k2.T).reshape(x.shape), rtol=1e-5, atol=1e-5)
    assert d_params["kernel"].shape == k64.shape and n_in == k64.ndim - len(features)
    want_k = (x2.T @ w2).reshape(k64.shape)
    np.testing.assert_allclose(np.asarray(d_params["kernel"]), want_k, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(d_params["bias"]), w2.sum(0).reshape(features), rtol=1e-5)
