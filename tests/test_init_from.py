"""A new run's parameters from another checkpoint (`train.init_from`), and frozen parameters."""

from __future__ import annotations

import os
import re
import shutil

import jax
import numpy as np
import pytest
from helpers import compilation_cache, tiny_config, train

from transformer_jax.train.checkpoint import Checkpointer, CheckpointError, path_name
from transformer_jax.train.optim import FreezeError, trainable_labels, with_frozen
from transformer_jax.train.restore import load_for_inference, match_params, open_checkpoints
from transformer_jax.train.trainer import Setup


def flat(tree) -> dict[str, np.ndarray]:
    return {path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_params(workdir: str, step: int | None = None) -> dict[str, np.ndarray]:
    return flat(load_for_inference(workdir, step=step).params)


@pytest.fixture(scope="module")
def source(data_dir, tmp_path_factory) -> str:
    """Another tiny run: 2 steps, its checkpoint at step 2."""
    workdir = str(tmp_path_factory.mktemp("source"))
    train(tiny_config(data_dir, train__num_steps=2), workdir, tmp_path_factory)
    return workdir


def new_setup(data_dir, workdir: str, source: str, **extra) -> Setup:
    cfg = tiny_config(data_dir, train__init_from=source, **extra)
    return Setup(cfg, workdir, for_training=True)


def test_init_from_loads_exactly_the_params_with_a_fresh_optimizer(
    source, data_dir, tmp_path, capsys
):
    setup = new_setup(data_dir, str(tmp_path / "new"), source)
    try:
        state = setup.initial_state()
        got = flat(state.params)
        want = saved_params(source)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        # The optimizer starts fresh: count 0, zero moments (the source's are not).
        assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state))
        src = open_checkpoints(source)
        source_opt = jax.tree.leaves(src.restore_state_on_host(2)["opt_state"])
        src.close()
        assert any(np.any(np.asarray(x)) for x in source_opt)
        assert int(state.step) == 0
        assert not setup.resumed and setup.step is None
        directory, step, matched = setup.init_from
        assert step == 2 and matched.new == [] and matched.dropped == []
        # The source's tokenizer is kept: its embeddings index that vocabulary.
        assert "training the tokenizer" not in capsys.readouterr().out
    finally:
        setup.ckpt.close()


def test_a_changed_layer_is_reported_new_and_dropped(source, data_dir, tmp_path, capsys):
    """One more decoder layer: its parameters are new; the others are loaded unchanged."""
    setup = new_setup(data_dir, str(tmp_path / "deeper"), source, model__num_decoder_layers=2)
    try:
        _, _, matched = setup.init_from
        assert matched.new and all(n.startswith("decoder/") and "_1/" in n for n in matched.new)
        assert matched.dropped == []
        got, want = flat(setup.initial_state().params), saved_params(source)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    finally:
        setup.ckpt.close()

    # A params-only checkpoint (as `tjax import-hf` writes) with one array more and one
    # less than the model: the extra one is dropped, the missing one initialised afresh.
    src = open_checkpoints(source)
    meta = src.restore_meta(2)
    params = src.restore_state_on_host(2)["params"]
    src.close()
    names = sorted(flat(params))
    missing = names[0]
    parts = missing.split("/")
    node = params
    for p in parts[:-1]:
        node = node[p]
    del node[parts[-1]]
    params["extra"] = {"kernel": np.ones((3, 5), np.float32)}
    imported = str(tmp_path / "imported")
    out = Checkpointer(os.path.join(imported, "checkpoints"), keep=1)
    out.save(
        0,
        state={"step": 0, "params": params, "opt_state": {}},
        data={},
        config=meta["config"],
        model=meta["model"],
        tokenizer=meta["tokenizer"],
    )
    out.close()
    capsys.readouterr()
    setup = new_setup(data_dir, str(tmp_path / "from_imported"), imported)
    try:
        _, step, matched = setup.init_from
        assert (step, matched.new, matched.dropped) == (0, [missing], ["extra/kernel"])
        assert setup.arch_from_checkpoint  # a params-only step keeps its architecture
    finally:
        setup.ckpt.close()


def test_mismatched_shape_is_a_one_line_error(source, data_dir, tmp_path):
    with pytest.raises(CheckpointError) as e:
        new_setup(data_dir, str(tmp_path / "wider"), source, model__d_ff=128)
    msg = str(e.value)
    assert "\n" not in msg
    assert re.search(
        r"^checkpoint step 2 in \S+: parameter [^ ]+/mlp/[^ ]+ has shape \((32, )?64,?\) "
        r"there, the model needs \((32, )?128,?\)$",
        msg,
    ), msg


def test_match_params_reports_by_name():
    model = {
        "a": {"kernel": jax.ShapeDtypeStruct((2, 3), np.float32)},
        "b": jax.ShapeDtypeStruct((4,), np.float32),
    }
    saved = {"a": {"kernel": np.arange(6, dtype=np.float64).reshape(2, 3)}, "c": np.zeros(1)}
    m = match_params(model, saved, "here")
    assert list(m.loaded) == ["a/kernel"] and m.loaded["a/kernel"].dtype == np.float32
    assert (m.new, m.dropped) == (["b"], ["c"])
    assert "loaded 1 parameter arrays (6 values)" in m.summary()
    with pytest.raises(CheckpointError, match=r"here: parameter b has shape \(5,\) there"):
        match_params(model, {"b": np.zeros(5)}, "here")


def test_frozen_parameters_get_zero_updates():
    params = {"encoder": {"w": np.ones(3, np.float32)}, "decoder": {"w": np.ones(3, np.float32)}}
    grads = {"encoder": {"w": np.ones(3, np.float32)}, "decoder": {"w": np.ones(3, np.float32)}}
    import optax

    tx = with_frozen(optax.adam(0.1), frozen="^encoder/")
    updates, _ = tx.update(grads, tx.init(params), params)
    assert not np.any(updates["encoder"]["w"]) and np.all(updates["decoder"]["w"] != 0)
    labels = trainable_labels("decoder", "")(params)
    assert labels == {"encoder": {"w": "frozen"}, "decoder": {"w": "train"}}
    with pytest.raises(FreezeError, match="'train.frozen'='nothing' matches no parameter"):
        with_frozen(optax.adam(0.1), frozen="nothing").init(params)
    assert with_frozen(optax.adam(0.1)).init(params) is not None


@pytest.mark.slow
def test_frozen_params_keep_their_values_while_the_others_train(
    source, data_dir, tmp_path, tmp_path_factory
):
    workdir = str(tmp_path / "frozen")
    cfg = tiny_config(
        data_dir,
        train__init_from=source,
        train__frozen="^encoder/",
        train__num_steps=2,
    )
    train(cfg, workdir, tmp_path_factory)
    before, after = saved_params(source), saved_params(workdir, 2)
    frozen = [n for n in before if n.startswith("encoder/")]
    assert frozen
    for name in before:
        if name in frozen:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert any(not np.array_equal(after[n], before[n]) for n in before if n not in frozen)


@pytest.mark.slow
def test_a_rerun_resumes_from_its_own_checkpoint(
    source, data_dir, tmp_path, tmp_path_factory, capsys
):
    """Stopped after its step 2 checkpoint, the run resumes there: the source is not read
    again (it is gone), and the frozen parameters still hold the source's values."""
    copy = str(tmp_path / "source_copy")
    shutil.copytree(source, copy)
    workdir = str(tmp_path / "run")
    settings = dict(train__init_from=copy, train__frozen="^decoder/")
    train(tiny_config(data_dir, train__num_steps=2, **settings), workdir, tmp_path_factory)
    out = capsys.readouterr().out
    assert "starting from imported weights (step 2 of " in out and "new (freshly" in out
    at_two = saved_params(workdir, 2)
    shutil.rmtree(copy)
    with compilation_cache(tmp_path_factory):
        from transformer_jax.train.trainer import train_and_evaluate

        train_and_evaluate(tiny_config(data_dir, train__num_steps=4, **settings), workdir)
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "train.init_from is ignored" in out
    after = saved_params(workdir, 4)
    source_params = saved_params(source)
    for name, value in after.items():
        if name.startswith("decoder/"):
            np.testing.assert_array_equal(value, source_params[name], err_msg=name)
    assert any(not np.array_equal(after[n], at_two[n]) for n in after if n.startswith("encoder/"))
