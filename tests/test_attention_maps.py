"""Attention maps: the sown weights are the model's softmax(QK^T/sqrt(d) + mask), the normal
path never computes them, the pictures are real PNGs, and `tjax attention` draws a trained
translation run (one PNG per layer and kind) and refuses tasks without a view in one line."""

from __future__ import annotations

import io
import math

import flax
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.translation.model import EncoderDecoder, shift_right
from transformer_jax.train.attention_maps import (
    AttentionView,
    collect_attention,
    inspection_config,
    render_png,
    unscanned_params,
)

PAD, EOS, BOS = 0, 1, 2


def _tiny_config(**changes) -> TransformerConfig:
    cfg = TransformerConfig(
        vocab_size=40,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.0,
        max_position=64,
        attention_impl="xla",
    )
    return cfg.replace(**changes)


def _batch():
    """Two rows; the second is shorter on both sides (padding 0)."""
    inputs = np.array([[5, 6, 7, 8, 9, EOS], [10, 11, EOS, PAD, PAD, PAD]], np.int32)
    targets = np.array([[12, 13, 14, 15, EOS], [16, EOS, PAD, PAD, PAD]], np.int32)
    return inputs, targets


def _init(cfg: TransformerConfig):
    inputs, targets = _batch()
    model = EncoderDecoder(cfg)
    return model, jax.jit(model.init)(jax.random.key(0), inputs, targets)


def _softmax64(q_TNH, k_SNH, visible_TS):
    """float64 NumPy reference: softmax over visible keys, zeros elsewhere; [N, T, S]."""
    q, k = np.asarray(q_TNH, np.float64), np.asarray(k_SNH, np.float64)
    s_NTS = np.einsum("tnh,snh->nts", q, k) / math.sqrt(q.shape[-1])
    s_NTS = np.where(visible_TS[None], s_NTS, -np.inf)
    m = np.max(s_NTS, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(visible_TS[None], np.exp(s_NTS - m), 0.0)
    z = e.sum(axis=-1, keepdims=True)
    return np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)


def test_sown_weights_equal_a_float64_softmax_of_the_layers_own_q_and_k():
    cfg = _tiny_config()
    model, variables = _init(cfg)
    assert set(variables) == {"params"}  # init sows nothing
    inputs, targets = _batch()
    _, state = jax.jit(
        lambda v: model.apply(
            v,
            inputs,
            targets,
            mutable=["intermediates"],
            # Also record what the q/k projections return (rotary positions are off here).
            capture_intermediates=lambda mdl, _: mdl.name in ("query", "key"),
        )
    )(variables)
    flat = flax.traverse_util.flatten_dict(state["intermediates"])
    sown = {p[:-1]: v[0] for p, v in flat.items() if p[-1] == "attention_weights"}
    proj = {p[:-1]: v[0] for p, v in flat.items() if p[-1] == "__call__"}
    assert len(sown) == 6  # 2 encoder self, 2 decoder self, 2 cross

    src_seg = inputs != PAD
    tgt_seg = targets != PAD
    T = targets.shape[1]
    causal_TT = np.tril(np.ones((T, T), bool))
    checked = {"encoder": 0, "self": 0, "cross": 0}
    for path, w_BNTS in sown.items():
        w_BNTS = np.asarray(w_BNTS)
        q_BTNH, k_BSNH = proj[path + ("query",)], proj[path + ("key",)]
        for b in range(inputs.shape[0]):
            if path[0] == "encoder":
                visible = src_seg[b][:, None] & src_seg[b][None, :]
                checked["encoder"] += 1
            elif path[-1] == "self_attention":
                visible = tgt_seg[b][:, None] & tgt_seg[b][None, :] & causal_TT
                checked["self"] += 1
            else:
                visible = tgt_seg[b][:, None] & src_seg[b][None, :]
                checked["cross"] += 1
            want = _softmax64(q_BTNH[b], k_BSNH[b], visible)
            np.testing.assert_allclose(w_BNTS[b], want, atol=2e-6, err_msg=str(path))
            # Rows of real queries sum to 1; masked keys (padding, the future) get 0.
            real = visible.any(axis=-1)
            np.testing.assert_allclose(w_BNTS[b].sum(-1)[:, real], 1.0, atol=1e-5)
            assert np.all(w_BNTS[b][:, ~visible] == 0.0)
            if path[0] == "decoder" and path[-1] == "self_attention":
                assert np.all(np.triu(w_BNTS[b], k=1) == 0.0)  # lower-triangular
                assert np.all(np.diagonal(w_BNTS[b], axis1=1, axis2=2)[:, tgt_seg[b]] > 0)
    assert checked == {"encoder": 4, "self": 4, "cross": 4}


def _attention_calls(jaxpr) -> int:
    """How many `dot_product_attention` programs a jaxpr calls (at any depth)."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.params.get("name") == "dot_product_attention":
            n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _attention_calls(sub)
    return n


def test_a_normal_apply_never_computes_weights(monkeypatch):
    cfg = _tiny_config()
    model, variables = _init(cfg)
    inputs, targets = _batch()
    with_weights, state = model.apply(variables, inputs, targets, mutable=["intermediates"])
    assert "attention_weights" in str(jax.tree_util.tree_structure(state))

    def forbidden(*args, **kwargs):
        raise AssertionError("the weights path ran in a normal apply")

    monkeypatch.setattr("transformer_jax.nn.attention.attention_with_weights", forbidden)
    plain = model.apply(variables, inputs, targets)
    assert isinstance(plain, jax.Array)  # no collections come back
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(with_weights))
    # The normal program calls the jitted attention core once per attention module;
    # asking for intermediates replaces every call.
    normal = jax.make_jaxpr(lambda v: model.apply(v, inputs, targets))(variables)
    assert _attention_calls(normal.jaxpr) == 6
    monkeypatch.undo()
    asked = jax.make_jaxpr(lambda v: model.apply(v, inputs, targets, mutable=["intermediates"]))(
        variables
    )
    assert _attention_calls(asked.jaxpr) == 0
    # Other attention cores sow nothing even when asked (the caller forces "xla").
    auto = EncoderDecoder(cfg.replace(attention_impl="chunked"))
    _, state = auto.apply(variables, inputs, targets, mutable=["intermediates"])
    assert not jax.tree.leaves(state)


def test_collect_attention_reads_scanned_checkpoints():
    """Parameters of a scanned stack give the same weights as the unscanned model's."""
    inputs, targets = _batch()
    scanned = EncoderDecoder(_tiny_config(scan_layers=True))
    params = jax.jit(scanned.init)(jax.random.key(1), inputs, targets)["params"]
    assert "layers" in params["encoder"]
    model = EncoderDecoder(inspection_config(scanned.config))
    weights = collect_attention(model, params, inputs, targets)
    assert sorted(weights) == sorted(
        (stack, f"layer_{i}", kind)
        for stack, kinds in (
            ("encoder", ("self_attention",)),
            ("decoder", ("self_attention", "cross_attention")),
        )
        for kind in kinds
        for i in range(2)
    )
    # The scanned model's output equals the unscanned one's on the split parameters.
    out_scanned = jax.jit(scanned.apply)({"params": params}, inputs, targets)
    out_plain = jax.jit(model.apply)({"params": unscanned_params(params)}, inputs, targets)
    np.testing.assert_allclose(np.asarray(out_plain), np.asarray(out_scanned), atol=1e-5)
    dec_in = shift_right(jnp.asarray(targets), BOS)
    assert dec_in.shape == targets.shape


def test_render_png_is_a_real_picture_with_a_grid_of_heads():
    from PIL import Image

    rng = np.random.default_rng(0)
    w = rng.random((3, 5, 7)).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    view = AttentionView(
        kind="encoder-decoder attention",
        layer=2,
        weights=w,
        query_tokens=[f"▁q{i}" for i in range(5)],
        key_tokens=[f"▁k{i}" for i in range(7)],
        note="source cut to its first 48 of 60 tokens",
    )
    assert view.name == "encoder_decoder_attention_layer2"
    data = render_png(view, title="step 4")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    width, height = image.size
    assert 600 <= width <= 3000 and 250 <= height <= 2000, image.size
    assert width > height  # three heads side by side
    pixels = np.asarray(image.convert("L"), np.float32)
    assert pixels.std() > 10  # not blank


def test_a_task_without_a_view_says_so_in_one_line():
    from transformer_jax.tasks.multimodal.task import MultimodalTask
    from transformer_jax.train.task import InputError

    task = MultimodalTask(MultimodalTask.base_config())
    with pytest.raises(InputError, match=r"^task multimodal has no attention view$"):
        task.attention_view(None, "a sentence")


class _Encoding:
    """The part of a classification pipeline the view uses: text -> ids."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, texts, warn):
        return [np.asarray([2, *self.tok.encode(t), 3], np.int32) for t in texts]


def test_encoder_view_is_bidirectional_self_attention_over_every_token():
    from transformer_jax.configs.classify_tiny import get_config
    from transformer_jax.data.tokenizer import train_sentencepiece
    from transformer_jax.tasks.classification.attention import encoder_attention
    from transformer_jax.tasks.classification.config import model_config
    from transformer_jax.tasks.classification.model import TextEncoderModel
    from transformer_jax.train.restore import Loaded

    cfg = get_config()
    cfg.model.update(d_model=16, num_heads=2, d_ff=32, num_encoder_layers=2)
    texts = ["the screen is good but the battery is bad", "no es malo", "great value"] * 20
    tok = train_sentencepiece(texts, vocab_size=60, model_type="bpe")
    config = model_config(cfg, vocab_size=60, pad_id=0, num_labels=3, mlm_head=False)
    params = TextEncoderModel(config).init(jax.random.key(0), np.ones((1, 8), np.int32))
    loaded = Loaded(params["params"], config, {"tokenizer": tok}, cfg, step=0)
    text = "the screen is good but the battery is bad"
    views = encoder_attention(loaded, _Encoding(tok), text)
    assert [(v.kind, v.layer) for v in views] == [("self-attention", 0), ("self-attention", 1)]
    n = len(tok.encode(text)) + 2
    for v in views:
        assert v.weights.shape == (2, n, n) and v.query_tokens == v.key_tokens
        assert v.query_tokens[0] == tok.id_to_piece(2) and len(v.query_tokens) == n
        np.testing.assert_allclose(v.weights.sum(-1), 1.0, atol=1e-5)
        assert np.triu(v.weights, k=1).sum() > 0.1 * n  # later tokens are attended to
        assert v.note == ""
    cut = encoder_attention(loaded, _Encoding(tok), text, max_tokens=5)
    assert cut[0].weights.shape == (2, 5, 5)
    assert cut[0].note == f"input cut to its first 5 of {n} tokens"


# -- a trained translation run -----------------------------------------------------------------

SENTENCE = "The cat sleeps on the couch."


@pytest.mark.slow
def test_trained_translation_run_draws_every_layer_and_kind(trained, tmp_path):
    from PIL import Image

    from transformer_jax.tasks.translation.pipeline import TranslationPipeline
    from transformer_jax.train.attention_maps import attention_arrays, attention_maps

    views = attention_arrays(trained, SENTENCE)
    kinds = {(v.kind, v.layer) for v in views}
    assert kinds == {
        ("encoder self-attention", 0),
        ("decoder self-attention", 0),
        ("encoder-decoder attention", 0),
    }
    by_kind = {v.kind: v for v in views}
    enc, dec, cross = (
        by_kind["encoder self-attention"],
        by_kind["decoder self-attention"],
        by_kind["encoder-decoder attention"],
    )
    S, T = len(enc.key_tokens), len(dec.query_tokens)
    assert enc.weights.shape == (2, S, S) and cross.weights.shape == (2, T, S)
    assert dec.weights.shape == (2, T, T)
    assert enc.key_tokens[-1] == "</s>" or enc.key_tokens[-1].startswith("<")
    np.testing.assert_allclose(cross.weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(dec.weights, k=1) == 0.0)
    # The rows are the model's own greedy translation.
    pipe = TranslationPipeline.from_workdir(trained, beam_size=1)
    greedy = pipe.translate([SENTENCE])[0]
    tok = pipe.tgt_tokenizer
    predicted = [t for t in dec.query_tokens if t != tok.id_to_piece(pipe.model_config.eos_id)]
    assert tok.decode([tok.piece_to_id(p) for p in predicted]) == greedy

    written = attention_maps(trained, SENTENCE, out_dir=str(tmp_path / "maps"))
    assert sorted(p.name for p in written) == [
        "decoder_self_attention_layer0.png",
        "encoder_decoder_attention_layer0.png",
        "encoder_self_attention_layer0.png",
    ]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200


@pytest.mark.slow
def test_cli_attention_writes_pngs_and_refuses_bad_layers_and_tasks(
    trained, tmp_path, capsys, monkeypatch
):
    from transformer_jax.__main__ import main

    out = tmp_path / "cli"
    rc = main(["attention", "--workdir", trained, SENTENCE, "--out", str(out), "--layers", "0"])
    printed = capsys.readouterr().out.split()
    assert rc == 0 and len(printed) == 3 and all(p.endswith(".png") for p in printed)
    assert sorted(f.name for f in out.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in printed)

    rc = main(["attention", "--workdir", trained, SENTENCE, "--layers", "3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "layers [3] do not exist" in err

    # A run of a task without a view (the multimodal task stands in for its run).
    from transformer_jax.tasks.multimodal.task import MultimodalTask

    monkeypatch.setattr(
        "transformer_jax.config.make_task", lambda cfg: MultimodalTask(MultimodalTask.base_config())
    )
    rc = main(["attention", "--workdir", trained, SENTENCE])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == "tjax attention: error: task multimodal has no attention view"


def _lm_loaded(scan_layers: bool):
    """A random Llama-style language model (rotary positions, grouped-query attention)
    with a small SentencePiece model, as `load_for_inference` would return it."""
    from transformer_jax.configs.lm_tiny import get_config
    from transformer_jax.data.tokenizer import train_sentencepiece
    from transformer_jax.nn.lm import CausalLM
    from transformer_jax.tasks.generation.config import model_config
    from transformer_jax.train.restore import Loaded

    cfg = get_config()
    cfg.model.update(d_model=16, num_heads=2, num_kv_heads=1, d_ff=32, num_decoder_layers=2)
    cfg.model.scan_layers = scan_layers
    texts = ["the cat sleeps on the couch", "a dog runs in the park", "ana has a red kite"] * 20
    tok = train_sentencepiece(texts, vocab_size=60, model_type="bpe")
    config = model_config(cfg, tok)
    ids = np.ones((1, 8), np.int32)
    params = CausalLM(config).init(jax.random.key(0), ids)["params"]
    return Loaded(params, config, {"tokenizer": tok}, cfg, step=0)


@pytest.mark.slow
def test_language_model_view_is_causal_self_attention_over_prompt_and_greedy_tokens():
    from transformer_jax.tasks.generation.attention import lm_attention
    from transformer_jax.train.attention_maps import GENERATED_TOKENS

    loaded = _lm_loaded(scan_layers=True)
    views = lm_attention(loaded, "the cat sleeps")
    assert [(v.kind, v.layer) for v in views] == [("self-attention", 0), ("self-attention", 1)]
    prompt = [loaded.processors["tokenizer"].id_to_piece(i) for i in [2]]  # bos
    for v in views:
        n = len(v.query_tokens)
        assert v.query_tokens == v.key_tokens and v.query_tokens[:1] == prompt
        assert v.weights.shape == (2, n, n)
        assert np.all(np.triu(v.weights, k=1) == 0.0)
        np.testing.assert_allclose(v.weights.sum(-1), 1.0, atol=1e-5)
    note = views[0].note
    generated = n - 1 - len(loaded.processors["tokenizer"].encode("the cat sleeps"))
    assert 0 < generated <= GENERATED_TOKENS
    assert note == f"the last {generated} tokens are generated"
    # A long prompt is cut, and the picture says so.
    long_views = lm_attention(loaded, " ".join(["the cat sleeps on the couch"] * 20), max_tokens=12)
    assert long_views[0].weights.shape == (2, 12, 12)
    assert long_views[0].note.startswith("prompt cut to its first 12 of ")
