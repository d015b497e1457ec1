"""Token-level losses shared by the sequence tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(
    logits_BTV, targets_BT, weights_BT, label_smoothing: float, allowed_V=None
):
    """Sum over tokens of the label-smoothed cross entropy, and of the plain NLL.

    Smoothing as in Szegedy et al. (2016), used by the paper with eps = 0.1: the
    target distribution puts 1 - eps on the reference and eps / (n - 1) on every
    other token the model can emit. `allowed_V` (bool [V]) marks those tokens; by
    default all V. A banned token (e.g. an imported model's <pad>, logit -1e9) gets
    no mass: it would cost eps / (V - 1) * 1e9 per token and no model could reach
    the minimum. Returns (smoothed_sum, nll_sum, weight_sum, correct_sum).
    """
    V = logits_BTV.shape[-1]
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    if label_smoothing > 0:
        if allowed_V is None:
            n = V
            sum_logp_BT = jnp.sum(logp_BTV, axis=-1)
            others_BT = sum_logp_BT + nll_BT  # sum of logp over the tokens but the target
        else:
            allowed_V = jax.lax.stop_gradient(allowed_V)
            n = jnp.maximum(jnp.sum(allowed_V.astype(jnp.float32)), 2.0)
            # Only the allowed tokens' logp: a banned one's (about -1e9) gets no mass.
            sum_logp_BT = jnp.sum(
                jnp.where(jnp.broadcast_to(allowed_V, logp_BTV.shape), logp_BTV, 0.0), axis=-1
            )
            target_allowed_BT = allowed_V[targets_BT]
            others_BT = sum_logp_BT + jnp.where(target_allowed_BT, nll_BT, 0.0)
        off = label_smoothing / (n - 1)
        on = 1.0 - label_smoothing
        # -[on * logp[t] + off * (sum of logp over the other allowed tokens)]
        loss_BT = on * nll_BT - off * others_BT
        # Subtract the entropy of the smoothed target so a perfect model scores 0.
        const = -(on * jnp.log(on) + (n - 1) * off * jnp.log(off + 1e-20))
        loss_BT = loss_BT - const
    else:
        loss_BT = nll_BT
    w_BT = weights_BT.astype(jnp.float32)
    correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
    return (
        jnp.sum(loss_BT * w_BT),
        jnp.sum(nll_BT * w_BT),
        jnp.sum(w_BT),
        jnp.sum(correct_BT * w_BT),
    )
