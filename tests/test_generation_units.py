"""Causal-LM training pieces: document packing, next-token targets, the packed loss
against each document scored alone, FLOPs against the parameter count, config checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from transformer_jax.config import ConfigError
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.lm import CausalLM
from transformer_jax.tasks.generation.config import lm_base, stop_strings, validate_lm
from transformer_jax.tasks.generation.data import EncodeDocument, lm_dataset
from transformer_jax.tasks.generation.task import decoder_only_flops, next_token_targets


class CharTokenizer:
    """ids 4.. for 'a'..'z' and ' '; pad 0, eos 1, bos 2."""

    bos_id, eos_id, pad_id, vocab_size = 2, 1, 0, 31
    alphabet = "abcdefghijklmnopqrstuvwxyz "

    def encode(self, text):
        return [4 + self.alphabet.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.alphabet[i - 4] for i in ids if i >= 4)


DOCS = ["ab", "hello world", "xyz", "a long document that spans rows", "q"]


def _batches(max_length=8, rows=4, shuffle=False):
    source = [{"text": t} for t in DOCS]
    ds = lm_dataset(
        source,
        EncodeDocument(CharTokenizer(), "text"),
        max_length=max_length,
        rows=rows,
        shuffle=shuffle,
        num_epochs=1,
        drop_remainder=False,
    )
    return list(ds)


def test_packing_keeps_every_token_once_in_its_own_segment():
    batches = _batches()
    tok = CharTokenizer()
    pieces = []
    for b in batches:
        assert {k: v.dtype for k, v in b.items()} == {k: np.int32 for k in b}
        for ids, seg, pos in zip(b["inputs"], b["segment_ids"], b["positions"]):
            assert ids.shape == (8,)
            for s in sorted(set(seg.tolist()) - {0}):
                where = np.flatnonzero(seg == s)
                assert np.all(np.diff(where) == 1)  # contiguous
                np.testing.assert_array_equal(pos[where], np.arange(len(where)))
                pieces.append(ids[where].tolist())
            assert np.all(ids[seg == 0] == 0)
    # Every document's [bos] ids [eos], cut into 8-token pieces, appears exactly once.
    expected = []
    for t in DOCS:
        doc = [tok.bos_id, *tok.encode(t), tok.eos_id]
        expected += [doc[i : i + 8] for i in range(0, len(doc), 8)]
    assert sorted(pieces) == sorted(expected)


def test_targets_stay_inside_a_document():
    ids = np.array([[2, 5, 6, 1, 2, 7, 1, 0]], np.int32)
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0]], np.int32)
    batch = {"inputs": jnp.asarray(ids), "segment_ids": jnp.asarray(seg)}
    targets, weights = next_token_targets(batch)
    # By hand: each token predicts the next one of its own segment; a segment's last
    # token and padding predict nothing.
    np.testing.assert_array_equal(np.asarray(weights), [[1, 1, 1, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(targets)[0, :3], [5, 6, 1])
    np.testing.assert_array_equal(np.asarray(targets)[0, 4:6], [7, 1])


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_packed_loss_equals_each_document_scored_alone(style):
    from transformer_jax.tasks.generation.task import CausalLMTask

    extra = (
        dict(norm_type="rms", activation="swiglu", position_type="rope", num_kv_heads=1)
        if style == "llama"
        else dict(position_type="learned", activation="gelu_tanh")
    )
    config = TransformerConfig(
        vocab_size=31,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_encoder_layers=0,
        num_decoder_layers=2,
        dropout_rate=0.0,
        norm_position="pre",
        scale_embeddings=False,
        max_position=16,
        **extra,
    )
    model = CausalLM(config)
    docs = [[2, 5, 6, 7, 1], [2, 9, 1], [2, 4, 4, 8, 10, 11, 1]]
    L = 16
    row, seg, pos = [], [], []
    for s, d in enumerate(docs, 1):
        row += d
        seg += [s] * len(d)
        pos += list(range(len(d)))
    pad = L - len(row)
    batch = {
        "inputs": np.array([row + [0] * pad], np.int32),
        "segment_ids": np.array([seg + [0] * pad], np.int32),
        "positions": np.array([pos + [0] * pad], np.int32),
    }
    params = model.init(jax.random.key(0), batch["inputs"])["params"]
    task = CausalLMTask(lm_base())
    task.cfg.train.label_smoothing = 0.0
    _, metrics = task.loss(model, params, batch, jax.random.key(1))
    # Reference: each document alone, log-softmax in float64 NumPy.
    nll, count = 0.0, 0
    for d in docs:
        logits = np.asarray(model.apply({"params": params}, np.array([d], np.int32)), np.float64)
        logp = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
        nll -= sum(logp[t, d[t + 1]] for t in range(len(d) - 1))
        count += len(d) - 1
    assert float(metrics["weight_sum"]) == count
    np.testing.assert_allclose(float(metrics["nll_sum"]), nll, rtol=1e-5)


def test_flops_match_the_parameter_count():
    """Forward matmul FLOPs per token = 2 x (matmul weights) + attention; counted here
    from the initialised parameters' shapes."""
    config = TransformerConfig(
        vocab_size=100,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        d_ff=64,
        num_encoder_layers=0,
        num_decoder_layers=3,
        activation="swiglu",
        norm_type="rms",
        norm_position="pre",
        position_type="rope",
        scale_embeddings=False,
        tie_output=False,
        mlp_bias=False,
        max_position=32,
    )
    params = CausalLM(config).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    matmul = sum(
        int(np.prod(x.shape))
        for path, x in jax.tree_util.tree_leaves_with_path(params)
        if x.ndim >= 2 and "embed" not in jax.tree_util.keystr(path)
    )
    B, T = 2, 8
    attention = 2 * 2 * T * config.num_heads * config.dim_per_head * config.num_decoder_layers
    expected = 3 * B * T * (2 * matmul + attention)
    assert decoder_only_flops(config, B, T) == pytest.approx(expected)


def _cfg(**changes) -> ml_collections.ConfigDict:
    c = lm_base()
    for key, value in changes.items():
        group, _, leaf = key.partition("__")
        c[group][leaf] = value
    return c


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(generate__top_p=0.0), "generate.top_p"),
        (dict(generate__top_p=1.5), "generate.top_p"),
        (dict(generate__top_k=-1), "generate.top_k"),
        (dict(generate__temperature=-0.5), "generate.temperature"),
        (dict(generate__repetition_penalty=0.0), "generate.repetition_penalty"),
        (dict(generate__stop="not json"), "generate.stop"),
        (dict(model__num_encoder_layers=2), "model.num_encoder_layers"),
        (dict(data__max_length=4096), "data.max_length"),
    ],
)
def test_bad_settings_are_one_line_errors(change, key):
    with pytest.raises(ConfigError) as e:
        validate_lm(_cfg(**change))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_stop_strings_parse():
    assert stop_strings('["\\n", "."]') == ["\n", "."]
    assert stop_strings("") == []
