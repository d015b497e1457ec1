"""Logit parity of EncoderDecoder with a PyTorch model built from torch.nn.Transformer layers.

The reference uses ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` for the
stacks; the embedding scheme (shared table scaled by sqrt(d_model), sinusoidal positions, tied
pre-softmax projection) is written here in torch, and the position table is computed here from
the paper's formula rather than imported.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from transformer_jax.nn.config import TransformerConfig  # noqa: E402
from transformer_jax.tasks.translation.model import EncoderDecoder  # noqa: E402

VOCAB, D_MODEL, HEADS, D_FF, LAYERS = 60, 32, 4, 64, 2
PAD, START = 0, 2
ATOL = 1e-5


def paper_positions(max_len: int, dim: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same), in float64."""
    table = np.zeros((max_len, dim), np.float64)
    for pos in range(max_len):
        for i in range(dim // 2):
            angle = pos / (10000.0 ** (2.0 * i / dim))
            table[pos, 2 * i] = math.sin(angle)
            table[pos, 2 * i + 1] = math.cos(angle)
    return table


class TorchSeq2Seq(torch.nn.Module):
    def __init__(self, *, pre_ln: bool, bias: bool, activation: str, max_len: int):
        super().__init__()
        self.embedding = torch.nn.Parameter(torch.zeros(VOCAB, D_MODEL))
        common = dict(
            d_model=D_MODEL,
            nhead=HEADS,
            dim_feedforward=D_FF,
            dropout=0.0,
            activation=activation,
            layer_norm_eps=1e-5,
            batch_first=True,
            norm_first=pre_ln,
            bias=bias,
        )

        def final_norm():
            return torch.nn.LayerNorm(D_MODEL, eps=1e-5, bias=bias) if pre_ln else None

        self.encoder = torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(**common),
            LAYERS,
            norm=final_norm(),
            enable_nested_tensor=False,
        )
        self.decoder = torch.nn.TransformerDecoder(
            torch.nn.TransformerDecoderLayer(**common), LAYERS, norm=final_norm()
        )
        self.register_buffer(
            "positions", torch.from_numpy(paper_positions(max_len, D_MODEL).astype(np.float32))
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding[ids] * math.sqrt(D_MODEL)
        return x + self.positions[: ids.shape[1]][None]

    def forward(self, src: torch.Tensor, dec_in: torch.Tensor) -> torch.Tensor:
        src_pad = src == PAD
        memory = self.encoder(self.embed(src), src_key_padding_mask=src_pad)
        T = dec_in.shape[1]
        causal = torch.nn.Transformer.generate_square_subsequent_mask(T)
        hidden = self.decoder(
            self.embed(dec_in),
            memory,
            tgt_mask=causal,
            tgt_is_causal=True,
            memory_key_padding_mask=src_pad,
        )
        return hidden @ self.embedding.T


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32))


def _copy_norm(ln: torch.nn.LayerNorm, p: dict) -> None:
    ln.weight.copy_(_t(p["scale"]))
    if ln.bias is not None:
        ln.bias.copy_(_t(p["bias"]))


def _copy_attention(mha: torch.nn.MultiheadAttention, p: dict) -> None:
    D = D_MODEL
    q, k, v = (np.asarray(p[n]["kernel"]).reshape(D, D) for n in ("query", "key", "value"))
    mha.in_proj_weight.copy_(_t(np.concatenate([q.T, k.T, v.T], axis=0)))
    mha.out_proj.weight.copy_(_t(np.asarray(p["out"]["kernel"]).reshape(D, D).T))
    if mha.in_proj_bias is not None:
        b = [np.asarray(p[n]["bias"]).reshape(D) for n in ("query", "key", "value")]
        mha.in_proj_bias.copy_(_t(np.concatenate(b)))
        mha.out_proj.bias.copy_(_t(p["out"]["bias"]))


def _copy_mlp(lin1: torch.nn.Linear, lin2: torch.nn.Linear, p: dict) -> None:
    lin1.weight.copy_(_t(np.asarray(p["wi"]["kernel"]).T))
    lin2.weight.copy_(_t(np.asarray(p["wo"]["kernel"]).T))
    if lin1.bias is not None:
        lin1.bias.copy_(_t(p["wi"]["bias"]))
        lin2.bias.copy_(_t(p["wo"]["bias"]))


def load_into_torch(tm: TorchSeq2Seq, params: dict) -> None:
    with torch.no_grad():
        tm.embedding.copy_(_t(params["embed"]["embedding"]))
        for i, layer in enumerate(tm.encoder.layers):
            p = params["encoder"][f"layer_{i}"]
            _copy_attention(layer.self_attn, p["self_attention"])
            _copy_mlp(layer.linear1, layer.linear2, p["mlp"])
            _copy_norm(layer.norm1, p["attention_block"]["norm"])
            _copy_norm(layer.norm2, p["mlp_block"]["norm"])
        for i, layer in enumerate(tm.decoder.layers):
            p = params["decoder"][f"layer_{i}"]
            _copy_attention(layer.self_attn, p["self_attention"])
            _copy_attention(layer.multihead_attn, p["cross_attention"])
            _copy_mlp(layer.linear1, layer.linear2, p["mlp"])
            _copy_norm(layer.norm1, p["attention_block"]["norm"])
            _copy_norm(layer.norm2, p["cross_block"]["norm"])
            _copy_norm(layer.norm3, p["mlp_block"]["norm"])
        if tm.encoder.norm is not None:
            _copy_norm(tm.encoder.norm, params["encoder"]["final_norm"])
            _copy_norm(tm.decoder.norm, params["decoder"]["final_norm"])


def _perturb(params: dict, seed: int, *, biases: bool) -> dict:
    """Makes every parameter informative: random biases and non-unit norm scales.

    Without biases (torch's ``bias=False`` drops them from every Linear and LayerNorm), all
    bias leaves are zeroed so that both models compute the same function.
    """
    rng = np.random.default_rng(seed)

    def one(path, leaf):
        leaf = np.asarray(leaf)
        noise = 0.3 * rng.standard_normal(leaf.shape).astype(leaf.dtype)
        name = path[-1].key
        if name == "bias":
            return jnp.asarray(noise if biases else np.zeros_like(leaf))
        if name == "scale":
            return jnp.asarray(leaf + noise)
        return jnp.asarray(leaf)

    return jax.tree_util.tree_map_with_path(one, params)


def _batch(rng: np.random.Generator, B: int, S: int, T: int, src_lens, tgt_lens):
    src = rng.integers(3, VOCAB, size=(B, S)).astype(np.int32)
    tgt = rng.integers(3, VOCAB, size=(B, T)).astype(np.int32)
    for b in range(B):
        src[b, src_lens[b] :] = PAD
        tgt[b, tgt_lens[b] :] = PAD
    return src, tgt


@pytest.mark.parametrize(
    "norm_position,attention_bias,activation",
    [
        ("post", True, "relu"),
        ("post", False, "relu"),
        ("pre", True, "relu"),
        ("pre", False, "relu"),
        ("post", True, "gelu"),
        ("pre", False, "gelu"),
    ],
)
def test_logits_match_torch_transformer(norm_position, attention_bias, activation):
    cfg = TransformerConfig(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        num_heads=HEADS,
        d_ff=D_FF,
        num_encoder_layers=LAYERS,
        num_decoder_layers=LAYERS,
        dropout_rate=0.0,
        activation=activation,
        norm_position=norm_position,
        layer_norm_eps=1e-5,
        attention_bias=attention_bias,
        pad_id=PAD,
        decoder_start_id=START,
        max_position=64,
        attention_impl="xla",
    )
    rng = np.random.default_rng(7)
    B, S, T = 2, 6, 5
    src, tgt = _batch(rng, B, S, T, src_lens=[6, 2], tgt_lens=[3, 5])

    model = EncoderDecoder(cfg)
    variables = model.init(jax.random.key(0), jnp.asarray(src), jnp.asarray(tgt))
    params = nn.unbox(variables["params"])
    params = _perturb(params, 1, biases=attention_bias)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(src), jnp.asarray(tgt)))
    assert ours.shape == (B, T, VOCAB)

    tm = TorchSeq2Seq(
        pre_ln=norm_position == "pre",
        bias=attention_bias,
        activation=activation,
        max_len=cfg.max_position,
    )
    load_into_torch(tm, params)
    tm.eval()
    # Decoder input: start token, then the targets shifted right (padding kept as padding).
    dec_in = np.concatenate([np.full((B, 1), START, np.int32), tgt[:, :-1]], axis=1)
    dec_in = np.where(tgt == PAD, PAD, dec_in)
    with torch.no_grad():
        ref = tm(torch.from_numpy(src).long(), torch.from_numpy(dec_in).long()).numpy()

    valid = tgt != PAD
    assert np.all(np.isfinite(ref[valid]))
    np.testing.assert_allclose(ours[valid], ref[valid], rtol=0, atol=ATOL)
    # The comparison is not vacuous: logits vary across positions and vocabulary.
    assert np.std(ref[valid]) > 0.1


def test_reference_positions_differ_between_columns():
    """Sanity check on the reference table itself: the paper's values at a few points."""
    table = paper_positions(4, 8)
    np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1, 0, 1])
    assert table[1, 0] == pytest.approx(math.sin(1.0))
    assert table[1, 1] == pytest.approx(math.cos(1.0))
    assert table[3, 2] == pytest.approx(math.sin(3.0 / 10000 ** (2 / 8)))
    assert table[3, 7] == pytest.approx(math.cos(3.0 / 10000 ** (6 / 8)))
