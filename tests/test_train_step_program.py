"""The compiled train step stays linear in the number of parameter leaves.

Keeping or refusing a whole update on one "all finite" flag must not copy the flag's
computation (an AND over every leaf) into each leaf's kernel: that made the program,
and its compile time, quadratic in the number of leaves (minutes for a few hundred).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer_jax.train.trainer import TrainState, all_finite, train_step


class ManyLeaves(nn.Module):
    leaves: int
    config: None = None

    @nn.compact
    def __call__(self, x):
        for i in range(self.leaves):
            x = x * self.param(f"w{i}", nn.initializers.ones, (8,))
        return x


class SquaredNorm:
    """The least a task gives `train_step`: a summed loss, its weight, a token count."""

    def loss(self, model, params, batch, rng):
        s = jnp.sum(jnp.square(model.apply({"params": params}, batch["x"])))
        return s, {"loss_sum": s, "weight_sum": jnp.ones((), jnp.float32)}

    def batch_counts(self, batch, config):
        return jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)


def _program(leaves: int, inject_nonfinite_step: int = -1):
    model = ManyLeaves(leaves)
    x = jnp.full((8,), 1.01, jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.adam(1e-2)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    step = functools.partial(
        train_step,
        task=SquaredNorm(),
        model=model,
        tx=tx,
        base_rng=jax.random.key(1),
        inject_nonfinite_step=inject_nonfinite_step,
    )
    return jax.jit(step), state, {"x": x}


def _and_ops(leaves: int) -> int:
    step, state, batch = _program(leaves)
    text = step.lower(state, batch).compile().as_text()
    return sum(" and(" in line for line in text.splitlines())


def test_compiled_step_grows_linearly_with_the_leaves():
    small, large = _and_ops(16), _and_ops(64)
    # Linear: about 4x the ANDs for 4x the leaves (one flag, computed once). The
    # quadratic program had about 16x (every leaf's kernel held the whole AND).
    assert large < 6 * small, (small, large)
    assert large < 20 * 64, large


def test_a_nonfinite_step_keeps_every_leaf_and_a_finite_one_moves_them():
    step, state, batch = _program(12, inject_nonfinite_step=0)
    refused, metrics = step(state, batch)
    assert float(metrics["nonfinite"]) == 1.0
    for name, value in refused.params.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(state.params[name]))
    np.testing.assert_array_equal(
        np.asarray(refused.opt_state[0].mu["w7"]), np.asarray(state.opt_state[0].mu["w7"])
    )
    assert int(refused.step) == 1
    applied, metrics = step(refused, batch)  # step 1: not injected
    assert float(metrics["nonfinite"]) == 0.0
    for name, value in applied.params.items():
        assert not np.array_equal(np.asarray(value), np.asarray(refused.params[name])), name


@pytest.mark.parametrize(
    "poison",
    [None, "nan", "inf", "-inf", "inf_and_-inf", "large_float16", "float16_inf", "sum_overflows"],
)
def test_all_finite_agrees_with_numpy(poison):
    rng = np.random.default_rng(0)
    tree = {
        "w": rng.normal(size=(64, 33)).astype(np.float32),
        "b": rng.normal(size=(7,)).astype(np.float32),
        "h": rng.normal(size=(300,)).astype(np.float16),
        "count": np.int32(3),  # not floating point: not checked
    }
    if poison == "nan":
        tree["w"][5, 7] = np.nan
    elif poison == "inf":
        tree["b"][2] = np.inf
    elif poison == "-inf":
        tree["w"][0, 0] = -np.inf
    elif poison == "inf_and_-inf":  # their sum is NaN, not an infinity
        tree["w"][1, 1], tree["w"][2, 2] = np.inf, -np.inf
    elif poison == "large_float16":  # finite, but its float16 sum would overflow
        tree["h"][:] = 60000.0
    elif poison == "float16_inf":
        tree["h"][9] = np.inf
    elif poison == "sum_overflows":  # finite, but even a float32 sum passes float32's range
        tree["w"][:] = 3.0e38
    want = all(np.isfinite(v).all() for k, v in tree.items() if k != "count")
    assert bool(jax.jit(all_finite)(jax.tree.map(jnp.asarray, tree))) == want
