"""Decoder-only stacks vs references: Hugging Face Llama and GPT-2 with random weights,
float64 NumPy attention for the prefix-LM mask, and the decoder layer's memories.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.nn.attention import MultiHeadAttention
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.lm import CausalLM
from transformer_jax.nn.transformer import Decoder, DecoderLayer

V, D, F, N, K, LAYERS = 64, 32, 48, 4, 2, 2
H = D // N


def hf():
    """(torch, transformers) or skip."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


def llama_config(**overrides) -> TransformerConfig:
    base = dict(
        vocab_size=V,
        d_model=D,
        num_heads=N,
        num_kv_heads=K,
        d_ff=F,
        num_decoder_layers=LAYERS,
        dropout_rate=0.0,
        norm_type="rms",
        norm_position="pre",
        layer_norm_eps=1e-6,
        activation="swiglu",
        mlp_bias=False,
        attention_bias=False,
        position_type="rope",
        position_layout="halves",
        rope_theta=500.0,
        scale_embeddings=False,
        tie_output=False,
        max_position=64,
    )
    return TransformerConfig(**{**base, **overrides})


def gpt2_config(**overrides) -> TransformerConfig:
    base = dict(
        vocab_size=V,
        d_model=D,
        num_heads=N,
        d_ff=4 * D,
        num_decoder_layers=LAYERS,
        dropout_rate=0.0,
        norm_type="layer",
        norm_position="pre",
        layer_norm_eps=1e-5,
        activation="gelu_tanh",
        mlp_bias=True,
        attention_bias=True,
        position_type="learned",
        scale_embeddings=False,
        tie_output=True,
        max_position=32,
    )
    return TransformerConfig(**{**base, **overrides})


def t2n(t) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def llama_params(model) -> dict:
    """Our CausalLM params from a transformers LlamaForCausalLM (torch Linear is [out, in])."""
    sd = {k: t2n(v) for k, v in model.state_dict().items()}
    layers = {}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        layers[f"layer_{i}"] = {
            "attention_block": {"norm": {"scale": sd[p + "input_layernorm.weight"]}},
            "mlp_block": {"norm": {"scale": sd[p + "post_attention_layernorm.weight"]}},
            "self_attention": {
                "query": {"kernel": sd[p + "self_attn.q_proj.weight"].T.reshape(D, N, H)},
                "key": {"kernel": sd[p + "self_attn.k_proj.weight"].T.reshape(D, K, H)},
                "value": {"kernel": sd[p + "self_attn.v_proj.weight"].T.reshape(D, K, H)},
                "out": {"kernel": sd[p + "self_attn.o_proj.weight"].T.reshape(N, H, D)},
            },
            "mlp": {
                "wi_0": {"kernel": sd[p + "mlp.gate_proj.weight"].T},
                "wi_1": {"kernel": sd[p + "mlp.up_proj.weight"].T},
                "wo": {"kernel": sd[p + "mlp.down_proj.weight"].T},
            },
        }
    layers["final_norm"] = {"scale": sd["model.norm.weight"]}
    return {
        "embed": {"embedding": sd["model.embed_tokens.weight"]},
        "decoder": layers,
        "logits_dense": {"kernel": sd["lm_head.weight"].T},
    }


def gpt2_params(model) -> dict:
    """Our CausalLM params from a transformers GPT2LMHeadModel (Conv1D weights are [in, out])."""
    sd = {k: t2n(v) for k, v in model.state_dict().items()}
    layers = {}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        qkv_w = sd[p + "attn.c_attn.weight"].reshape(D, 3, N, H)
        qkv_b = sd[p + "attn.c_attn.bias"].reshape(3, N, H)
        layers[f"layer_{i}"] = {
            "attention_block": {
                "norm": {"scale": sd[p + "ln_1.weight"], "bias": sd[p + "ln_1.bias"]}
            },
            "mlp_block": {"norm": {"scale": sd[p + "ln_2.weight"], "bias": sd[p + "ln_2.bias"]}},
            "self_attention": {
                name: {"kernel": qkv_w[:, j], "bias": qkv_b[j]}
                for j, name in enumerate(("query", "key", "value"))
            }
            | {
                "out": {
                    "kernel": sd[p + "attn.c_proj.weight"].reshape(N, H, D),
                    "bias": sd[p + "attn.c_proj.bias"],
                }
            },
            "mlp": {
                "wi": {"kernel": sd[p + "mlp.c_fc.weight"], "bias": sd[p + "mlp.c_fc.bias"]},
                "wo": {"kernel": sd[p + "mlp.c_proj.weight"], "bias": sd[p + "mlp.c_proj.bias"]},
            },
        }
    layers["final_norm"] = {
        "scale": sd["transformer.ln_f.weight"],
        "bias": sd["transformer.ln_f.bias"],
    }
    return {
        "embed": {"embedding": sd["transformer.wte.weight"]},
        "positions": {"positions": {"embedding": sd["transformer.wpe.weight"]}},
        "decoder": layers,
    }


def same_structure(ours: dict, cfg: TransformerConfig, ids) -> None:
    """The converted tree has exactly the shapes our model initialises."""
    init = nn.unbox(jax.eval_shape(CausalLM(cfg).init, jax.random.key(0), ids)["params"])
    chex.assert_trees_all_equal_shapes(init, ours)  # same structure too; names the leaf


def random_ids(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int64)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_llama_logits_match_transformers(scan_layers: bool) -> None:
    torch, transformers = hf()
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=F,
        num_hidden_layers=LAYERS,
        num_attention_heads=N,
        num_key_value_heads=K,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hf_cfg._attn_implementation = "eager"
    ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    ids = random_ids((2, 11))
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids)).logits.numpy()
    cfg = llama_config(scan_layers=scan_layers)
    params = llama_params(ref)
    same_structure(params, llama_config(), jnp.asarray(ids, jnp.int32))
    if scan_layers:
        stacked = [params["decoder"].pop(f"layer_{i}") for i in range(LAYERS)]
        params["decoder"]["layers"] = jax.tree.map(lambda *x: np.stack(x), *stacked)
    ids_j = jnp.asarray(ids, jnp.int32)
    out = CausalLM(cfg).apply({"params": params}, ids_j, segment_ids=jnp.ones_like(ids_j))
    assert np.abs(expected).max() > 0.1  # the reference is not trivially zero
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_llama_left_padded_batch_matches_transformers() -> None:
    """Left padding with per-row positions: HF's attention_mask + position_ids."""
    torch, transformers = hf()
    torch.manual_seed(1)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=F,
        num_hidden_layers=LAYERS,
        num_attention_heads=N,
        num_key_value_heads=K,
        rope_theta=500.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    hf_cfg._attn_implementation = "eager"
    ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    ids = random_ids((2, 9), seed=3)
    mask = np.ones((2, 9), np.int64)
    mask[1, :4] = 0
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        expected = ref(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(pos),
        ).logits.numpy()
    out = CausalLM(llama_config()).apply(
        {"params": llama_params(ref)},
        jnp.asarray(ids, jnp.int32),
        segment_ids=jnp.asarray(mask, jnp.int32),
        positions=jnp.asarray(pos, jnp.int32),
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[real], expected[real], atol=1e-5, rtol=1e-5)


def test_gpt2_logits_match_transformers() -> None:
    torch, transformers = hf()
    torch.manual_seed(2)
    hf_cfg = transformers.GPT2Config(
        vocab_size=V,
        n_positions=32,
        n_embd=D,
        n_layer=LAYERS,
        n_head=N,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf_cfg._attn_implementation = "eager"
    ref = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ids = random_ids((2, 13), seed=4)
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids)).logits.numpy()
    cfg = gpt2_config()
    params = gpt2_params(ref)
    ids_j = jnp.asarray(ids, jnp.int32)
    same_structure(params, cfg, ids_j)
    out = CausalLM(cfg).apply({"params": params}, ids_j, segment_ids=jnp.ones_like(ids_j))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ prefix-LM


def rope64(x, pos, theta):
    """Rotate-half RoPE in float64: x [B, L, N, H], pos [B, L]."""
    half = x.shape[-1] // 2
    inv = theta ** (-np.arange(0, 2 * half, 2, dtype=np.float64) / (2 * half))
    ang = pos[:, :, None, None].astype(np.float64) * inv
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate(
        [x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1
    )


def prefix_attention64(params, x, seg, pos, prefix, theta) -> np.ndarray:
    """Float64 NumPy multi-head self-attention with the prefix-LM mask (GQA, RoPE, no bias)."""
    p = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
    x = x.astype(np.float64)
    q = rope64(np.einsum("btd,dnh->btnh", x, p["query"]), pos, theta)
    k = rope64(np.einsum("btd,dkh->btkh", x, p["key"]), pos, theta)
    v = np.einsum("btd,dkh->btkh", x, p["value"])
    k, v = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
    order = (pos[:, None, :] <= pos[:, :, None]) | (prefix[:, :, None] & prefix[:, None, :])
    mask = (same & order)[:, None]
    s = np.where(mask, s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    e = np.where(mask, np.exp(s - np.where(np.isfinite(m), m, 0)), 0.0)
    w = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
    o = np.einsum("bnts,bsnh->btnh", w, v)
    return np.einsum("btnh,nhd->btd", o, p["out"])


def test_prefix_lm_attention_matches_float64_numpy() -> None:
    """Prefix tokens see their whole prefix, later tokens only what came before them."""
    cfg = llama_config()
    rng = np.random.default_rng(5)
    B, T = 2, 9
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    seg = np.array([[1] * 9, [0, 0, 1, 1, 1, 1, 1, 1, 0]], np.int32)  # row 1: left+right pad
    pos = np.maximum(np.cumsum(seg != 0, axis=1) - 1, 0).astype(np.int32)
    prefix = (pos < np.array([[4], [3]])) & (seg != 0)
    attn = MultiHeadAttention(cfg, causal=True)
    args = dict(q_seg_BT=jnp.asarray(seg), q_pos_BT=jnp.asarray(pos))
    params = nn.unbox(attn.init(jax.random.key(1), jnp.asarray(x), **args)["params"])
    out = attn.apply({"params": params}, jnp.asarray(x), q_prefix_BT=jnp.asarray(prefix), **args)
    expected = prefix_attention64(params, x, seg, pos, prefix, cfg.rope_theta)
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-5)
    # The prefix changes what prefix tokens see, and nothing after it.
    causal = attn.apply({"params": params}, jnp.asarray(x), **args)
    after = ~prefix & (seg != 0)
    np.testing.assert_allclose(np.asarray(out)[after], np.asarray(causal)[after], atol=1e-6)
    inside = prefix & (pos < np.array([[3], [2]]))  # not the prefix's last token
    assert np.abs(np.asarray(out)[inside] - np.asarray(causal)[inside]).min() > 1e-4


def test_prefix_lm_model_prefix_is_bidirectional() -> None:
    """Whole model: logits inside the prefix depend on later prefix tokens only."""
    cfg = llama_config()
    ids = jnp.asarray(random_ids((1, 8), seed=6), jnp.int32)
    seg = jnp.ones_like(ids)
    prefix = jnp.arange(8)[None] < 4
    model = CausalLM(cfg)
    params = model.init(jax.random.key(2), ids)["params"]

    def logits(ids_):
        return np.asarray(model.apply({"params": params}, ids_, seg, prefix_BT=prefix))

    base = logits(ids)
    in_prefix = logits(ids.at[0, 3].set((ids[0, 3] + 1) % V))  # change the last prefix token
    assert np.abs(in_prefix[0, :3] - base[0, :3]).max() > 1e-4  # earlier prefix tokens see it
    after_prefix = logits(ids.at[0, 6].set((ids[0, 6] + 1) % V))  # change a later token
    np.testing.assert_array_equal(after_prefix[0, :6], base[0, :6])  # nothing before sees it


# ------------------------------------------------------------------- decoder memories


def test_decoder_layer_memories_none_one_several() -> None:
    cfg = llama_config(num_decoder_layers=1)
    rng = np.random.default_rng(7)
    y = jnp.asarray(rng.normal(size=(2, 5, D)), jnp.float32)
    mem_a = jnp.asarray(rng.normal(size=(2, 4, D)), jnp.float32)
    mem_b = jnp.asarray(rng.normal(size=(2, 6, D)), jnp.float32)
    seg_t = jnp.ones((2, 5), jnp.int32)
    pos_t = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5))
    seg_a, seg_b = jnp.ones((2, 4), jnp.int32), jnp.ones((2, 6), jnp.int32)

    def init(layer, *args):
        return nn.unbox(layer.init(jax.random.key(3), *args)["params"])

    p0 = init(DecoderLayer(cfg, num_memories=0), y, None, seg_t, pos_t, None)
    p1 = init(DecoderLayer(cfg), y, mem_a, seg_t, pos_t, seg_a)
    p2 = init(DecoderLayer(cfg, num_memories=2), y, (mem_a, mem_b), seg_t, pos_t, (seg_a, seg_b))
    assert not any(k.startswith("cross") for k in p0)
    assert {k for k in p1 if k.startswith("cross")} == {"cross_attention", "cross_block"}
    assert {k for k in p2 if k.startswith("cross")} == {
        "cross_attention",
        "cross_block",
        "cross_attention_1",
        "cross_block_1",
    }
    # Pre-norm and no biases: a memory with nothing visible adds exactly zero, so two
    # memories with the second fully padded equal one memory with the same weights.
    one = DecoderLayer(cfg).apply({"params": p1}, y, mem_a, seg_t, pos_t, seg_a)
    p2_same = dict(p2, **{k: p1[k] for k in p1})
    two = DecoderLayer(cfg, num_memories=2).apply(
        {"params": p2_same}, y, (mem_a, mem_b), seg_t, pos_t, (seg_a, jnp.zeros_like(seg_b))
    )
    np.testing.assert_allclose(two, one, atol=1e-6)
    seen = DecoderLayer(cfg, num_memories=2).apply(
        {"params": p2_same}, y, (mem_a, mem_b), seg_t, pos_t, (seg_a, seg_b)
    )
    assert np.abs(np.asarray(seen) - np.asarray(one)).max() > 1e-4
    zero = DecoderLayer(cfg, num_memories=0).apply({"params": p0}, y, None, seg_t, pos_t, None)
    assert np.abs(np.asarray(zero) - np.asarray(one)).max() > 1e-4
    with pytest.raises(ValueError, match="2 memories, got 1"):
        DecoderLayer(cfg, num_memories=2).apply({"params": p2}, y, (mem_a,), seg_t, pos_t, (seg_a,))


def test_translation_decoder_keeps_its_parameter_names() -> None:
    """The default Decoder (one memory, paper norms) builds the same tree as before."""
    cfg = TransformerConfig(
        vocab_size=V, d_model=D, num_heads=N, d_ff=F, num_decoder_layers=1, dropout_rate=0.0
    )
    y = jnp.zeros((1, 3, D))
    enc = jnp.zeros((1, 4, D))
    pos = jnp.arange(3, dtype=jnp.int32)[None]
    params = nn.unbox(
        Decoder(cfg).init(jax.random.key(0), y, enc, jnp.ones((1, 3), jnp.int32), pos, None)
    )["params"]
    assert set(params["layer_0"]) == {
        "attention_block",
        "self_attention",
        "cross_block",
        "cross_attention",
        "mlp_block",
        "mlp",
    }
    assert set(params["layer_0"]["attention_block"]["norm"]) == {"scale", "bias"}
