"""Adam with the paper's inverse-square-root warmup schedule."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def rsqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
    """lr(step) = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step from 1.

    Vaswani et al. (2017), equation 3. Optax counts updates from 0, so update n
    uses the paper's step n + 1.
    """

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

    return schedule


def make_schedule(opt: ml_collections.ConfigDict, d_model: int) -> optax.Schedule:
    if opt.schedule == "rsqrt":
        return rsqrt_schedule(d_model, opt.warmup_steps, opt.lr_scale)
    return optax.constant_schedule(opt.lr_scale)


def make_optimizer(opt: ml_collections.ConfigDict, d_model: int) -> optax.GradientTransformation:
    schedule = make_schedule(opt, d_model)
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.weight_decay > 0:
        parts.append(
            optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
        )
    else:
        parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
    return optax.chain(*parts)
