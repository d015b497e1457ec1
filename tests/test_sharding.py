"""Meshes, sharding rules and the memory/precision options of the train step.

The steps run through `Setup` and `train_step`, jitted exactly as the trainer
does, on the same host batches, so only the mesh (or the option under test)
differs between the runs being compared.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from transformer_jax.config import ConfigError
from transformer_jax.train import sharding as shd
from transformer_jax.train.trainer import Setup, TrainState, train_and_evaluate, train_step

NUM_STEPS = 4

# Every strategy the README offers, on 8 devices; names give data x fsdp x tensor x sequence.
# Two meshes also rematerialise the layers: the backward pass draws their dropout masks again.
MESHES = {
    "1 device": dict(mesh__num_devices=1),
    "data_parallel 8x1x1x1": dict(mesh__data=8, mesh__rules="data_parallel"),
    "fsdp 1x8x1x1": dict(mesh__data=1, mesh__fsdp=8, mesh__rules="fsdp"),
    "fsdp_tensor 2x2x2x1": dict(
        mesh__data=2, mesh__fsdp=2, mesh__tensor=2, mesh__rules="fsdp_tensor"
    ),
    "fsdp_tensor 1x4x2x1": dict(
        mesh__data=1, mesh__fsdp=4, mesh__tensor=2, mesh__rules="fsdp_tensor"
    ),
    # The README's custom table, with the feed-forward layers split 4 ways.
    "custom 1x2x4x1 remat=dots": dict(
        mesh__data=1,
        mesh__fsdp=2,
        mesh__tensor=4,
        mesh__rules="batch:data+fsdp,embed:fsdp,mlp:tensor",
        model__remat="dots",
    ),
    # Activations split along "length" over the sequence axis.
    "fsdp 1x4x1x2": dict(mesh__data=1, mesh__fsdp=4, mesh__sequence=2, mesh__rules="fsdp"),
    "fsdp_tensor 1x2x2x2 remat=full": dict(
        mesh__data=1,
        mesh__fsdp=2,
        mesh__tensor=2,
        mesh__sequence=2,
        mesh__rules="fsdp_tensor",
        model__remat="full",
    ),
}

# Which mesh axis each logical axis of a parameter goes to, written out per strategy.
FSDP_TENSOR_AXES = {
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
}
EXPECTED_AXES = {
    "1 device": {},
    "data_parallel 8x1x1x1": {},
    "fsdp 1x8x1x1": {"embed": "fsdp"},
    "fsdp_tensor 2x2x2x1": FSDP_TENSOR_AXES,
    "fsdp_tensor 1x4x2x1": FSDP_TENSOR_AXES,
    "custom 1x2x4x1 remat=dots": {"embed": "fsdp", "mlp": "tensor"},
    "fsdp 1x4x1x2": {"embed": "fsdp"},
    "fsdp_tensor 1x2x2x2 remat=full": FSDP_TENSOR_AXES,
}


@pytest.fixture(scope="module")
def env(data_dir, tmp_path_factory):
    """One tokenizer file for every Setup here, and the first host batches of the data."""
    first = Setup(tiny_config(data_dir), str(tmp_path_factory.mktemp("tok")), for_training=True)
    path = str(tmp_path_factory.mktemp("tok") / "spm.model")
    first.processors["src_tokenizer"].save(path)
    it = iter(first.task.train_dataset(first.processors, 0, 1))
    batches = [next(it) for _ in range(30)]
    assert batches[0]["inputs"].shape == (16, 32)
    assert first.model_config.vocab_size == 200  # divisible by every tensor axis here

    def make(**overrides) -> Setup:
        cfg = tiny_config(data_dir, tokenizer__path=path, **overrides)
        return Setup(cfg, str(tmp_path_factory.mktemp("setup")), for_training=True)

    return make, batches


def jitted_step(setup: Setup):
    """`train_step` compiled with the trainer's shardings."""
    _, _, shardings = setup.abstract_state()
    return jax.jit(
        functools.partial(
            train_step,
            task=setup.task,
            model=setup.train_model,
            tx=setup.tx,
            base_rng=jax.random.key(setup.cfg.seed),
            accum_steps=setup.cfg.train.grad_accum_steps,
        ),
        in_shardings=(shardings, shd.batch_sharding(setup.mesh)),
        out_shardings=(shardings, shd.replicated(setup.mesh)),
    )


def run_steps(setup: Setup, batches, state=None, states=None):
    """(final state, per-step host metrics with "loss" = token-weighted mean loss).

    `states`, a list, receives the state after each step.
    """
    step = jitted_step(setup)
    state = setup.initial_state() if state is None else state
    out = []
    with setup.context():
        for batch in batches:
            state, metrics = step(state, shd.global_batch(batch, setup.mesh))
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            m["loss"] = m["loss_sum"] / m["weight_sum"]
            out.append(m)
            if states is not None:
                states.append(state)
    return state, out


def logical_names(setup: Setup):
    """The logical axis names of every parameter, as the model declares them."""
    batch = setup.task.example_batch(setup.model_config)
    with setup.context():
        boxed = jax.eval_shape(
            lambda r: setup.task.init_variables(setup.model, r, batch)["params"],
            jax.random.key(0),
        )
    return nn.get_partition_spec(boxed)


def flat(tree) -> dict[str, object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {jax.tree_util.keystr(p): v for p, v in leaves}


class MeshRun(NamedTuple):
    setup: Setup
    state: TrainState  # after NUM_STEPS steps
    metrics: list[dict[str, float]]
    initial: TrainState
    first_grads: dict[str, np.ndarray]  # flat: the gradient the first step applied


def applied_gradient(setup: Setup, state: TrainState) -> dict[str, np.ndarray]:
    """The gradient of the first step, from the state after it: Adam's first moment
    starts at zero, so after one step it is exactly (1 - b1) * gradient."""
    assert setup.cfg.optimizer.grad_clip_norm == 0  # no clipping between the two
    mu = flat(jax.device_get(state.opt_state[-1][0].mu))
    return {path: np.asarray(m) / (1.0 - setup.cfg.optimizer.b1) for path, m in mu.items()}


def assert_same_gradients(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Every leaf within 1e-5 of its largest entry (float reordering stays far below)."""
    assert got.keys() == want.keys()
    for path, g in want.items():
        scale = float(np.max(np.abs(g)))
        assert scale > 0, path  # every leaf receives a gradient
        np.testing.assert_allclose(got[path], g, rtol=0, atol=1e-5 * scale, err_msg=path)


@pytest.fixture(scope="module")
def mesh_runs(env) -> dict[str, MeshRun]:
    """NUM_STEPS train steps on every mesh, from the same parameters, dropout on."""
    make, batches = env
    runs = {}
    for name, overrides in MESHES.items():
        setup = make(**overrides)
        initial = setup.initial_state()
        states = []
        state, metrics = run_steps(setup, batches[:NUM_STEPS], initial, states)
        runs[name] = MeshRun(setup, state, metrics, initial, applied_gradient(setup, states[0]))
    return runs


# -- meshes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [m for m in MESHES if m != "1 device"])
def test_every_mesh_gives_the_single_device_losses(mesh_runs, name):
    """Dropout stays on: its rng is fold_in(seed, step), independent of the mesh."""
    setup, metrics = mesh_runs[name].setup, mesh_runs[name].metrics
    reference = mesh_runs["1 device"].metrics
    sizes = (int(n) for n in name.split()[1].split("x"))
    assert dict(setup.mesh.shape) == dict(zip(shd.MESH_AXES, sizes))
    assert mesh_runs["1 device"].setup.mesh.size == 1
    for i, (got, want) in enumerate(zip(metrics, reference)):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5), (name, i + 1)
        assert got["weight_sum"] == want["weight_sum"]
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), (name, i + 1)
    losses = [m["loss"] for m in reference]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # the steps did train


@pytest.mark.parametrize("name", [m for m in MESHES if m != "1 device"])
def test_every_mesh_gives_the_single_device_gradients(mesh_runs, name):
    """Every gradient leaf of the first step, dropout on, as on one device.

    A dropout mask drawn differently anywhere (e.g. recomputed in the backward pass
    with other random bits) shows here: another dropout key moves some leaf by 84% of
    its largest entry. Float reordering across devices stays below 1e-5 of it
    (measured: at most 1.1e-6).
    """
    run, reference = mesh_runs[name], mesh_runs["1 device"]
    assert not run.setup.train_model.config.deterministic
    assert run.setup.model_config.dropout_rate > 0
    remat = name.partition("remat=")[2] or "none"
    assert run.setup.model_config.remat == remat
    start, start_ref = flat(jax.device_get(run.initial.params)), flat(reference.initial.params)
    for path, want in start_ref.items():  # the same starting point, bit for bit
        np.testing.assert_array_equal(np.asarray(start[path]), np.asarray(want), err_msg=path)
    assert_same_gradients(run.first_grads, reference.first_grads)


@pytest.mark.parametrize("name", list(MESHES))
def test_parameter_shardings_follow_the_rules(mesh_runs, name):
    setup, state = mesh_runs[name].setup, mesh_runs[name].state
    mesh = setup.mesh
    expected = EXPECTED_AXES[name]
    names = flat(logical_names(setup))
    params = flat(state.params)
    mu = flat(state.opt_state[-1][0].mu)  # ZeRO-3: Adam's moments are split like the params
    assert names.keys() == params.keys() == mu.keys()
    split_any = False
    for path, logical in names.items():
        for arr in (params[path], mu[path]):
            want_spec = tuple(expected.get(a) for a in logical)
            got_spec = tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec))
            assert got_spec == want_spec, (name, path, logical)
            assert len(arr.addressable_shards) == mesh.size
            want_shape = tuple(
                n // (mesh.shape[ax] if ax else 1) for n, ax in zip(arr.shape, want_spec)
            )
            assert {s.data.shape for s in arr.addressable_shards} == {want_shape}, (name, path)
            split_any |= want_shape != arr.shape
    assert split_any == bool(expected)
    # Spot checks, spelled out: an [embed, mlp] kernel and the [vocab, embed] table.
    wi = state.params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]
    table = state.params["embed"]["embedding"]
    assert wi.shape == (32, 64) and table.shape == (200, 32)
    shard_shapes = {
        "1 device": ((32, 64), (200, 32)),
        "data_parallel 8x1x1x1": ((32, 64), (200, 32)),
        "fsdp 1x8x1x1": ((4, 64), (200, 4)),
        "fsdp_tensor 2x2x2x1": ((16, 32), (100, 16)),
        "fsdp_tensor 1x4x2x1": ((8, 32), (100, 8)),
        "custom 1x2x4x1 remat=dots": ((16, 16), (200, 16)),
        "fsdp 1x4x1x2": ((8, 64), (200, 8)),
        "fsdp_tensor 1x2x2x2 remat=full": ((16, 32), (100, 16)),
    }[name]
    assert wi.addressable_shards[0].data.shape == shard_shapes[0]
    assert table.addressable_shards[0].data.shape == shard_shapes[1]


@pytest.mark.parametrize("name", ["fsdp 1x8x1x1", "fsdp_tensor 2x2x2x1"])
def test_decoding_joins_qkv_unless_the_heads_are_split(env, mesh_runs, name):
    # The placed parameters decode with joined projections (fsdp splits only "embed") or
    # the three apart (tensor parallelism splits the heads); host copies of the same
    # parameters always decode joined, on one device. Every way gives the same tokens.
    from transformer_jax.nn.attention import heads_split
    from transformer_jax.tasks.translation.decoding import translate_ids

    _, batches = env
    setup, params = mesh_runs[name].setup, mesh_runs[name].state.params
    host = jax.device_get(params)
    assert heads_split(params) == name.startswith("fsdp_tensor")
    assert not heads_split(host)
    inputs = batches[0]["inputs"][:8]
    limits = np.full((8,), 12, np.int32)
    settings = dict(config=setup.model_config, alpha=0.6, max_decode_len=12)
    for beam in (1, 3):
        with setup.context():
            placed = translate_ids(params, inputs, limits, beam_size=beam, **settings)
        alone = translate_ids(host, inputs, limits, beam_size=beam, **settings)
        np.testing.assert_array_equal(np.asarray(placed), np.asarray(alone))
        assert (np.asarray(alone) > 0).any()


def test_a_dimension_the_mesh_does_not_divide_is_replicated(data_dir, tmp_path):
    """A 201-token vocabulary over tensor=2 stays whole; its embed dimension is still split."""
    cfg = tiny_config(
        data_dir,
        tokenizer__vocab_size=201,
        mesh__data=2,
        mesh__fsdp=2,
        mesh__tensor=2,
        mesh__rules="fsdp_tensor",
    )
    setup = Setup(cfg, str(tmp_path), for_training=True)
    assert setup.model_config.vocab_size == 201
    state = setup.initial_state()
    table = state.params["embed"]["embedding"]
    assert tuple(table.sharding.spec) == (None, "fsdp")
    assert {s.data.shape for s in table.addressable_shards} == {(201, 16)}
    wi = state.params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]
    assert tuple(wi.sharding.spec) == ("fsdp", "tensor")


# -- gradient accumulation, remat, scan, bf16 -------------------------------------------------


def test_accumulated_micro_batches_equal_one_large_batch(env, mesh_runs):
    make, batches = env
    initial = mesh_runs["data_parallel 8x1x1x1"].initial  # the same params and shardings
    one_setup = make(model__dropout_rate=0.0)
    one_states, two_states = [], []
    _, m_one = run_steps(one_setup, batches[:2], initial, one_states)
    # 16 rows on 8 devices: two micro-batches of 8 rows, one per device.
    two_setup = make(model__dropout_rate=0.0, train__grad_accum_steps=2)
    _, m_two = run_steps(two_setup, batches[:2], initial, two_states)
    for a, b in zip(m_one, m_two):
        for key in ("loss_sum", "nll_sum", "correct_sum", "weight_sum", "tokens"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key
        # Adam is invariant to the gradient's scale; the norm is not.
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6)
    # Not the parameters: Adam moves an entry whose gradient is ~0 by up to the learning
    # rate on a sign flip, which float reordering alone can cause.
    assert_same_gradients(
        applied_gradient(two_setup, two_states[0]), applied_gradient(one_setup, one_states[0])
    )


def compiled_loss_and_grads(setup: Setup, batch, params=None):
    """The compiled `value_and_grad` of the summed token loss (dropout on)."""
    params = setup.abstract_state()[1].params if params is None else params

    def f(p, b):
        return jax.value_and_grad(
            lambda p: setup.task.loss(setup.train_model, p, b, jax.random.key(7))[1]["loss_sum"]
        )(p)

    with setup.context():
        return jax.jit(f).lower(params, batch).compile()


def traced_loss(setup: Setup, batch) -> str:
    params = setup.abstract_state()[1].params
    with setup.context():
        return str(
            jax.make_jaxpr(
                lambda p: setup.task.loss(setup.train_model, p, batch, jax.random.key(7))[0]
            )(params)
        )


@pytest.fixture(scope="module")
def no_remat(env):
    make, batches = env
    setup = make(mesh__num_devices=1)
    assert "remat" not in traced_loss(setup, batches[0])
    params = setup.initial_state().params
    return params, compiled_loss_and_grads(setup, batches[0], params)(params, batches[0])


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradients(env, no_remat, policy):
    """Dropout on: the recomputed forward pass must draw the same masks."""
    make, batches = env
    params, (loss, grads) = no_remat
    setup = make(mesh__num_devices=1, model__remat=policy)
    # One rematerialized block per layer (1 encoder + 1 decoder), with the policy asked for.
    jaxpr = traced_loss(setup, batches[0])
    assert jaxpr.count("remat2[") == 2
    assert ("DotsSaveable" in jaxpr) == (policy == "dots")
    loss_r, grads_r = compiled_loss_and_grads(setup, batches[0], params)(params, batches[0])
    assert float(loss_r) == pytest.approx(float(loss), rel=1e-6)
    g, g_r = flat(grads), flat(grads_r)
    scale = max(float(jnp.max(jnp.abs(x))) for x in g.values())
    for path in g:
        np.testing.assert_allclose(np.asarray(g_r[path]), np.asarray(g[path]), atol=1e-6 * scale)


def test_remat_lowers_compiled_temporary_memory(env):
    """XLA's own memory analysis of the compiled gradient, layers under `scan`.

    With unrolled layers the CPU compiler schedules the recomputation early and
    reports no saving, so the stack is scanned here (as a large model would be).
    """
    make, batches = env
    temp = {}
    for policy in ("none", "dots", "full"):
        setup = make(
            mesh__num_devices=1,
            model__remat=policy,
            model__scan_layers=True,
            model__dropout_rate=0.0,
            model__num_encoder_layers=2,
            model__num_decoder_layers=2,
        )
        analysis = compiled_loss_and_grads(setup, batches[0]).memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis")
        temp[policy] = analysis.temp_size_in_bytes
    # Measured: none 8.5 MB, dots 5.1 MB, full 2.8 MB.
    assert temp["full"] < temp["dots"] < temp["none"], temp
    assert temp["full"] < 0.6 * temp["none"], temp


def test_scanned_layers_match_unrolled_layers_with_restacked_params(env):
    make, batches = env
    layers = dict(model__dropout_rate=0.0, model__num_encoder_layers=2, model__num_decoder_layers=2)
    unrolled = make(mesh__num_devices=1, **layers)
    scanned = make(mesh__num_devices=1, model__scan_layers=True, **layers)
    start = unrolled.initial_state()
    p = jax.device_get(start.params)
    stacked = {k: v for k, v in p.items() if k not in ("encoder", "decoder")}
    for stack in ("encoder", "decoder"):
        per_layer = [p[stack][f"layer_{i}"] for i in range(2)]
        rest = {k: v for k, v in p[stack].items() if not k.startswith("layer_")}
        stacked[stack] = dict(rest, layers=jax.tree.map(lambda *xs: np.stack(xs), *per_layer))
    _, _, shardings = scanned.abstract_state()
    assert jax.tree.structure(stacked) == jax.tree.structure(shardings.params)
    state = jax.device_put(
        TrainState(
            step=jnp.zeros((), jnp.int32), params=stacked, opt_state=scanned.tx.init(stacked)
        ),
        shardings,
    )
    _, m_unrolled = run_steps(unrolled, batches[:3], start)
    _, m_scanned = run_steps(scanned, batches[:3], state)
    for a, b in zip(m_unrolled, m_scanned):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert m_scanned[-1]["loss"] < m_scanned[0]["loss"]


def test_bfloat16_compute_trains_with_float32_params(env, mesh_runs):
    make, batches = env
    setup = make(mesh__data=8, model__dtype="bfloat16")
    assert setup.model_config.dtype == jnp.bfloat16
    f32_metrics, initial = (
        mesh_runs["data_parallel 8x1x1x1"].metrics,
        mesh_runs["data_parallel 8x1x1x1"].initial,
    )
    state, metrics = run_steps(setup, batches, initial)
    losses = [m["loss"] for m in metrics]
    f32_first = f32_metrics[0]["loss"]
    # bf16 keeps 8 bits of mantissa (~0.4% per rounding); measured: 1.3e-4 relative.
    assert losses[0] == pytest.approx(f32_first, rel=5e-3)
    assert losses[0] != f32_first  # it did compute in bfloat16
    assert np.mean(losses[-5:]) < losses[0] - 0.8, losses
    assert all(np.isfinite(losses)) and not any(m["nonfinite"] for m in metrics)
    for leaf in jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state[-1][0].mu):
        assert leaf.dtype == jnp.float32


# -- bad input ------------------------------------------------------------------------------


def fails_before_training(cfg, workdir: str) -> str:
    with pytest.raises(shd.MeshError) as e:
        train_and_evaluate(cfg, workdir)
    message = str(e.value)
    assert "\n" not in message
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    ckpts = os.path.join(workdir, "checkpoints")
    assert not os.path.isdir(ckpts) or not os.listdir(ckpts)
    return message


def test_mesh_that_does_not_fit_the_devices(data_dir, tmp_path):
    message = fails_before_training(tiny_config(data_dir, mesh__data=3), str(tmp_path))
    assert "'data': 3" in message and "8 devices" in message
    message = fails_before_training(
        tiny_config(data_dir, mesh__data=2, mesh__fsdp=2), str(tmp_path)
    )
    assert "uses 4 devices" in message and "8 are available" in message
    message = fails_before_training(tiny_config(data_dir, mesh__num_devices=9), str(tmp_path))
    assert "mesh.num_devices=9" in message and "8 devices" in message


def test_unknown_axis_in_a_custom_rule(data_dir):
    """Refused while the config is read, before anything is built."""
    for rules, words in (
        ("batch:data+fsdp,embed:fsdpp", ("'fsdpp'", "unknown mesh axis")),
        ("batch:data+fsdp,hidden:fsdp", ("'hidden'", "unknown logical axis")),
    ):
        with pytest.raises(ConfigError) as e:
            tiny_config(data_dir, mesh__rules=rules)
        message = str(e.value)
        assert "\n" not in message and "mesh.rules" in message, message
        assert all(w in message for w in words), message


def test_batch_not_divisible_by_the_data_parallel_size(data_dir, tmp_path):
    cfg = tiny_config(data_dir, train__grad_accum_steps=3)
    message = fails_before_training(cfg, str(tmp_path))
    assert "16 rows" in message and "data-parallel size 8" in message
    assert "grad_accum_steps 3" in message
