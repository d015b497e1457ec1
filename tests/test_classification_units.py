"""The classification task's pieces, each against an independent computation: BERT's
masking rates, the losses against PyTorch's, the metrics against counts by hand."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from transformer_jax.config import ConfigError
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.classification.config import classification_base
from transformer_jax.tasks.classification.data import label_value
from transformer_jax.tasks.classification.model import EncoderModelConfig, TextEncoderModel
from transformer_jax.tasks.classification.task import (
    ClassificationTask,
    classification_report,
    confusion_matrix_png,
    mask_tokens,
)
from transformer_jax.tasks.classification.text import LabelMap
from transformer_jax.train.task import InputError

PAD, CLS, SEP, MASK, V = 0, 2, 1, 4, 500


def _rows(rng, B=256, L=48):
    """Rows `[CLS] tokens [SEP] pad...` of random lengths; token ids >= 5."""
    ids = np.zeros((B, L), np.int32)
    lengths = rng.integers(4, L + 1, size=B)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        ids[b, 1 : n - 1] = rng.integers(5, V, size=n - 2)
    return ids, lengths


def _mlm(**kw):
    c = ml_collections.ConfigDict(
        dict(mask_rate=0.15, mask_token_fraction=0.8, random_token_fraction=0.1)
    )
    c.update(kw)
    return c


def test_masking_follows_berts_rates_and_spares_special_tokens():
    ids, lengths = _rows(np.random.default_rng(0), B=2048)
    out, target = mask_tokens(
        jax.random.key(1), jnp.asarray(ids), None, _mlm(), pad_id=PAD, mask_id=MASK, vocab_size=V
    )
    out, target = np.asarray(out), np.asarray(target)
    inner = np.zeros_like(target)
    for b, n in enumerate(lengths):
        inner[b, 1 : n - 1] = True
    assert not target[~inner].any()  # never [CLS], [SEP] or padding
    assert (out[~inner] == ids[~inner]).all()
    assert (out[~target] == ids[~target]).all()  # only targets change
    rate = target.sum() / inner.sum()
    assert 0.14 < rate < 0.16, rate
    masked = (out[target] == MASK).mean()
    kept = (out[target] == ids[target]).mean()
    assert 0.78 < masked < 0.82, masked
    # Random replacements sometimes draw the original id (1 in V): kept is ~10% + a hair.
    assert 0.085 < kept < 0.12, kept
    assert 0.085 < 1 - masked - kept < 0.115


def test_whole_word_masking_takes_every_piece_of_a_chosen_word():
    rng = np.random.default_rng(1)
    ids, lengths = _rows(rng)
    starts = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        starts[b, 1 : n - 1] = rng.random(n - 2) < 0.4
        starts[b, 1] = 1
    _, target = mask_tokens(
        jax.random.key(2),
        jnp.asarray(ids),
        jnp.asarray(starts),
        _mlm(),
        pad_id=PAD,
        mask_id=MASK,
        vocab_size=V,
    )
    target = np.asarray(target)
    words_seen = words_masked = 0
    for b, n in enumerate(lengths):
        word = np.cumsum(starts[b, 1 : n - 1])
        for w in np.unique(word):
            picked = target[b, 1 : n - 1][word == w]
            assert picked.all() or not picked.any(), (b, w, picked)
            words_seen += 1
            words_masked += picked.all()
    assert 0.13 < words_masked / words_seen < 0.17


def _model_and_task(problem_type, num_labels, class_weights=""):
    cfg = classification_base()
    cfg.head.problem_type = problem_type
    cfg.head.class_weights = class_weights
    cfg.data.labels = ",".join(f"L{i}" for i in range(num_labels))
    enc = TransformerConfig(
        vocab_size=V, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=1,
        num_decoder_layers=0, position_type="learned", scale_embeddings=False,
        activation="gelu", max_position=64,
    )  # fmt: skip
    mc = EncoderModelConfig(enc, num_labels=num_labels, problem_type=problem_type)
    model = TextEncoderModel(mc)
    ids, _ = _rows(np.random.default_rng(3), B=12, L=16)
    params = model.init(jax.random.key(0), jnp.asarray(ids))["params"]
    return ClassificationTask(cfg), model, params, ids


@pytest.mark.parametrize("weights", ["", "1.0,3.0,0.5"])
def test_single_label_loss_is_torchs_cross_entropy(weights):
    task, model, params, ids = _model_and_task("single_label", 3, weights)
    labels = np.random.default_rng(4).integers(0, 3, size=len(ids)).astype(np.int32)
    w = np.ones(len(ids), np.float32)
    w[-2:] = 0  # padding rows count for nothing
    batch = {"inputs": ids, "labels": labels, "weights": w}
    loss, m = task.loss(model, params, batch, jax.random.key(0))
    logits = torch.tensor(np.asarray(model.apply({"params": params}, ids)["logits"]))
    per = torch.nn.functional.cross_entropy(logits, torch.tensor(labels).long(), reduction="none")
    if weights:
        per = per * torch.tensor([1.0, 3.0, 0.5])[torch.tensor(labels).long()]
    want = (per * torch.tensor(w)).sum() / w.sum()
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    correct = ((logits.argmax(-1).numpy() == labels) * w).sum()
    assert float(m["correct_sum"]) == correct and float(m["weight_sum"]) == w.sum()


def test_multi_label_loss_is_torchs_binary_cross_entropy():
    task, model, params, ids = _model_and_task("multi_label", 4)
    labels = (np.random.default_rng(5).random((len(ids), 4)) < 0.4).astype(np.float32)
    batch = {"inputs": ids, "labels": labels, "weights": np.ones(len(ids), np.float32)}
    loss, _ = task.loss(model, params, batch, jax.random.key(0))
    logits = torch.tensor(np.asarray(model.apply({"params": params}, ids)["logits"]))
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_regression_loss_is_torchs_mean_squared_error():
    task, model, params, ids = _model_and_task("regression", 1)
    task.cfg.data.labels = ""  # regression needs no names: one value
    assert task.label_map().num_labels == 1
    labels = np.random.default_rng(6).normal(size=(len(ids), 1)).astype(np.float32) * 2
    batch = {"inputs": ids, "labels": labels, "weights": np.ones(len(ids), np.float32)}
    loss, _ = task.loss(model, params, batch, jax.random.key(0))
    logits = torch.tensor(np.asarray(model.apply({"params": params}, ids)["logits"]))
    want = torch.nn.functional.mse_loss(logits, torch.tensor(labels))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_metrics_match_counts_done_by_hand():
    # rows: true label; columns: predicted
    #   [[1, 1, 0],
    #    [0, 2, 0],
    #    [1, 0, 2]]
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert r["accuracy"] == pytest.approx(5 / 7)
    # precision a 1/2, b 2/3, c 1; recall a 1/2, b 1, c 2/3; F1 a 0.5, b 0.8, c 0.8
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["c"]["recall"] == pytest.approx(2 / 3)
    assert [r["per_class"][n]["f1"] for n in "abc"] == pytest.approx([0.5, 0.8, 0.8])
    assert r["macro_f1"] == pytest.approx(0.7)
    assert r["per_class"]["c"]["support"] == 3
    png = confusion_matrix_png(r)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_labels_outside_the_configured_ones_are_one_line_errors():
    labels = LabelMap(("NEGATIVE", "POSITIVE"))
    assert int(label_value(b"POSITIVE", labels)) == 1
    assert int(label_value(np.int64(0), labels)) == 0
    with pytest.raises(InputError, match="'NEUTRAL' is not one of the configured labels"):
        label_value("NEUTRAL", labels)
    with pytest.raises(InputError, match="label id 2 is outside the 2 configured labels"):
        label_value(2, labels)
    multi = LabelMap(("a", "b", "c"), "multi_label")
    np.testing.assert_array_equal(label_value(["a", "c"], multi), [1, 0, 1])
    with pytest.raises(ValueError, match="label names repeat"):
        LabelMap(("a", "a"))


def test_dataset_label_ids_are_read_by_name_when_the_config_orders_them_otherwise(tmp_path):
    labels = LabelMap(("POSITIVE", "NEGATIVE", "NEUTRAL"))
    dataset_order = ["NEGATIVE", "NEUTRAL", "POSITIVE"]
    assert [int(label_value(i, labels, dataset_order)) for i in range(3)] == [1, 2, 0]
    cfg = classification_base()
    cfg.data.data_dir = str(tmp_path)
    cfg.data.labels = "POSITIVE,NEGATIVE,NEUTRAL"
    task = ClassificationTask(cfg)
    assert task.label_map() == labels and task.id_names(labels) == dataset_order
    cfg.data.labels = "NEGATIVE,POSITIVE"  # the dataset also has NEUTRAL examples
    with pytest.raises(ConfigError, match=r"does not list the label\(s\) \['NEUTRAL'\]"):
        task.label_map()
    cfg.data.labels = ""
    assert task.label_map().names == tuple(dataset_order) and task.id_names(labels) is not None
    assert task.id_names(task.label_map()) is None
