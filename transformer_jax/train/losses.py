"""Token-level losses shared by the sequence tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(logits_BTV, targets_BT, weights_BT, label_smoothing: float):
    """Sum over tokens of the label-smoothed cross entropy, and of the plain NLL.

    Smoothing as in Szegedy et al. (2016), used by the paper with eps = 0.1: the
    target distribution puts 1 - eps on the reference and eps / (V - 1) on every
    other token. Returns (smoothed_sum, nll_sum, weight_sum, correct_sum).
    """
    V = logits_BTV.shape[-1]
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    if label_smoothing > 0:
        off = label_smoothing / (V - 1)
        on = 1.0 - label_smoothing
        sum_logp_BT = jnp.sum(logp_BTV, axis=-1)
        # -[on * logp[t] + off * (sum(logp) - logp[t])]
        loss_BT = on * nll_BT - off * (sum_logp_BT + nll_BT)
        # Subtract the entropy of the smoothed target so a perfect model scores 0.
        const = -(on * jnp.log(on) + (V - 1) * off * jnp.log(off + 1e-20))
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
