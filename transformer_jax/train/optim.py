"""Adam(W) with the paper's inverse-square-root schedule, or warmup + cosine/linear decay.

Every schedule counts steps from 1, as the paper does: Optax counts updates from 0,
so update n uses step n + 1 (the step the trainer logs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.core import meta


def rsqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
    """lr(step) = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step from 1.

    Vaswani et al. (2017), equation 3.
    """

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

    return schedule


def warmup_decay_schedule(
    kind: str, peak: float, warmup_steps: int, decay_steps: int, final_fraction: float = 0.0
) -> optax.Schedule:
    """Linear warmup to `peak` at step `warmup_steps`, then `kind` ("cosine" or "linear")
    decay to `peak * final_fraction` at step `decay_steps`, constant after; step from 1.

    Warmup: peak * step / warmup. Decay, with t = (step - warmup) / (decay - warmup)
    clipped to [0, 1]: peak * (f + (1 - f) * s(t)), s(t) = (1 + cos(pi t)) / 2 or 1 - t.
    """
    if kind not in ("cosine", "linear"):
        raise ValueError(f"unknown decay {kind!r}: choose cosine or linear")
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps={decay_steps} must be > warmup_steps={warmup_steps}")

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        t = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
        shape = 0.5 * (1.0 + jnp.cos(jnp.pi * t)) if kind == "cosine" else 1.0 - t
        decay = final_fraction + (1.0 - final_fraction) * shape
        warm = step / max(warmup_steps, 1)
        return peak * jnp.where(step < warmup_steps, warm, decay)

    return schedule


def make_schedule(
    opt: ml_collections.ConfigDict, d_model: int, num_steps: int | None = None
) -> optax.Schedule:
    """The learning rate schedule `opt` names; `num_steps` (train.num_steps) is where
    cosine and linear decay end when `opt.decay_steps` is 0."""
    if opt.schedule == "rsqrt":
        return rsqrt_schedule(d_model, opt.warmup_steps, opt.lr_scale)
    if opt.schedule in ("cosine", "linear"):
        decay_steps = opt.decay_steps or num_steps
        if not decay_steps:
            raise ValueError("optimizer.decay_steps=0 needs num_steps (train.num_steps)")
        return warmup_decay_schedule(
            opt.schedule, opt.peak_lr, opt.warmup_steps, decay_steps, opt.final_lr_fraction
        )
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.lr_scale)
    raise ValueError(f"unknown optimizer.schedule {opt.schedule!r}")


def param_kind(path: tuple[str, ...]) -> str:
    """ "norm", "bias", "embedding" or "weight", from a parameter's names (root to leaf).

    A norm's parameters (LayerNorm scale and bias, RMSNorm scale) live under a module
    named `norm` or `*_norm`; biases are `bias` or `*_bias` (e.g. `final_logits_bias`);
    embedding tables (tokens, learned positions, token types) are `embedding`. LayerScale
    gains (`layer_scale`) count as norm scales.
    """
    *modules, leaf = path
    if leaf == "layer_scale" or any(m == "norm" or m.endswith("_norm") for m in modules):
        return "norm"
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias"
    if leaf == "embedding":
        return "embedding"
    return "weight"


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def decay_mask(opt: ml_collections.ConfigDict) -> Callable[[Any], Any]:
    """params -> a tree of bools: True where weight decay applies.

    Weights always decay; norms, biases and embeddings as `opt.decay_*` say. Works on
    plain and on boxed (`nn.LogicallyPartitioned`) parameter trees.
    """
    decays = {
        "weight": True,
        "norm": opt.decay_norms,
        "bias": opt.decay_biases,
        "embedding": opt.decay_embeddings,
    }

    def mask(params):
        def leaf(path, _):
            return bool(decays[param_kind(tuple(_key_name(k) for k in path))])

        # Stops at a box, so the path ends at the parameter's own name.
        return jax.tree_util.tree_map_with_path(
            leaf, params, is_leaf=lambda x: isinstance(x, meta.AxisMetadata)
        )

    return mask


def make_optimizer(
    opt: ml_collections.ConfigDict, d_model: int, num_steps: int | None = None
) -> optax.GradientTransformation:
    """Optional global-norm clipping, then Adam, or AdamW (decoupled weight decay, masked
    by `decay_mask`) when `opt.weight_decay` > 0."""
    schedule = make_schedule(opt, d_model, num_steps)
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.weight_decay > 0:
        parts.append(
            optax.adamw(
                schedule,
                b1=opt.b1,
                b2=opt.b2,
                eps=opt.eps,
                weight_decay=opt.weight_decay,
                mask=decay_mask(opt),
            )
        )
    else:
        parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
    return optax.chain(*parts)


class FreezeError(ValueError):
    """A `train.trainable` / `train.frozen` pattern that selects no parameter (one line)."""


def trainable_labels(trainable: str, frozen: str) -> Callable[[Any], Any]:
    """params -> a tree of "train" / "frozen" labels, from regexes searched in each
    parameter's path name (`encoder/layers_0/attention/query/kernel`).

    `trainable` ("" = every parameter) selects what trains, `frozen` ("" = none) is
    taken out of it. Works on plain and on boxed parameter trees.
    """
    keep = re.compile(trainable) if trainable else None
    drop = re.compile(frozen) if frozen else None

    def labels(params):
        names = []

        def leaf(path, _):
            name = "/".join(_key_name(k) for k in path)
            names.append(name)
            if keep is not None and not keep.search(name):
                return "frozen"
            return "frozen" if drop is not None and drop.search(name) else "train"

        out = jax.tree_util.tree_map_with_path(
            leaf, params, is_leaf=lambda x: isinstance(x, meta.AxisMetadata)
        )
        for key, rx in (("train.trainable", keep), ("train.frozen", drop)):
            if rx is not None and not any(rx.search(n) for n in names):
                raise FreezeError(
                    f"config key '{key}'={rx.pattern!r} matches no parameter "
                    f"(names look like {names[0] if names else '?'})"
                )
        return out

    return labels


def with_frozen(
    tx: optax.GradientTransformation, trainable: str = "", frozen: str = ""
) -> optax.GradientTransformation:
    """`tx` on the trainable parameters only; the frozen ones get zero updates (and no
    optimizer state), so they keep their exact values. Without patterns: `tx` itself."""
    if not trainable and not frozen:
        return tx
    return optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()}, trainable_labels(trainable, frozen)
    )
