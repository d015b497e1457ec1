"""Token-level losses shared by the sequence tasks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from transformer_jax.decode.search import first_argmax


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

    The loss over the vocabulary has its own gradient (`_token_losses`): the
    log-probabilities are never stored, the forward pass reads the logits in fused
    reductions (maximum, sum of exponentials, the first index of the maximum), and the
    backward pass writes d logits in one elementwise pass (softmax, minus the smoothed
    target) instead of scattering through a gather.
    """
    V = logits_BTV.shape[-1]
    if allowed_V is None:
        n = jnp.float32(V)
    else:
        allowed_V = jax.lax.stop_gradient(allowed_V).astype(bool)
        n = jnp.maximum(jnp.sum(allowed_V.astype(jnp.float32)), 2.0)
    eps = float(label_smoothing)
    loss_BT, nll_BT, correct_BT = _token_losses(logits_BTV, targets_BT, allowed_V, n, eps)
    if eps > 0:
        on, off = _smoothing_coefficients(eps, n)
        # Subtract the entropy of the smoothed target so a perfect model scores 0.
        loss_BT = loss_BT + on * jnp.log(on) + (n - 1) * off * jnp.log(off + 1e-20)
    w_BT = weights_BT.astype(jnp.float32)
    return (
        jnp.sum(loss_BT * w_BT),
        jnp.sum(nll_BT * w_BT),
        jnp.sum(w_BT),
        jnp.sum(correct_BT * w_BT),
    )


def _smoothing_coefficients(eps: float, n):
    """(on, off): the smoothed target's mass on the reference and on each other token."""
    return 1.0 - eps, eps / (n - 1) if eps > 0 else 0.0


def _target_allowed(targets_BT, allowed_V):
    if allowed_V is None:
        return jnp.ones(targets_BT.shape, jnp.float32)
    return allowed_V[targets_BT].astype(jnp.float32)


def _token_losses_fwd(logits_BTV, targets_BT, allowed_V, n, eps: float):
    z_BTV = logits_BTV.astype(jnp.float32)
    m_BT1 = jnp.max(z_BTV, axis=-1, keepdims=True)
    log_s_BT = jnp.log(jnp.sum(jnp.exp(z_BTV - m_BT1), axis=-1))
    m_BT = m_BT1[..., 0]
    lse_BT = m_BT + log_s_BT
    z_target_BT = jnp.take_along_axis(z_BTV, targets_BT[..., None], axis=-1)[..., 0]
    nll_BT = lse_BT - z_target_BT
    correct_BT = _argmax_is_target(z_BTV, targets_BT, m_BT1, z_target_BT).astype(jnp.float32)
    if eps > 0:
        on, off = _smoothing_coefficients(eps, n)
        # Sum of logp over the allowed tokens, as sum(z - m) - n * log(s): no logp stored.
        centred_BTV = z_BTV - m_BT1
        if allowed_V is not None:
            centred_BTV = jnp.where(allowed_V, centred_BTV, 0.0)
        sum_logp_BT = jnp.sum(centred_BTV, axis=-1) - n * log_s_BT
        # The other allowed tokens: drop the target's own logp if it is one of them.
        others_BT = sum_logp_BT + _target_allowed(targets_BT, allowed_V) * nll_BT
        loss_BT = on * nll_BT - off * others_BT
    else:
        loss_BT = nll_BT
    residuals = (logits_BTV, targets_BT, allowed_V, n, lse_BT)
    return (loss_BT, nll_BT, correct_BT), residuals


def _argmax_is_target(z_BTV, targets_BT, m_BT1, z_target_BT):
    """bool [B, T]: `argmax(z) == target`, the first index winning a tie, NaN first.

    Where every row's maximum is held by one entry, that is `z[target] == max`, which
    costs nothing over the vocabulary. A CPU runs a reduction over a compare or select
    of [T, V] about 10x slower than one over arithmetic, so uniqueness is proven with
    arithmetic: exp((z - max) * 1e30) is exactly 1 at each entry equal to the maximum
    and about 0 at every other (for normal floats, anything below it by more than 1e-30),
    so a row sum below 2 means one holder. A batch with any other row (a tie, a NaN, an
    infinite logit) takes the exact first-index reduction instead.
    """
    unique = jnp.all(jnp.sum(jnp.exp((z_BTV - m_BT1) * 1e30), axis=-1) < 2.0)
    return jax.lax.cond(
        unique,
        lambda: z_target_BT == m_BT1[..., 0],
        lambda: first_argmax(z_BTV) == targets_BT,
    )


def _token_losses_bwd(eps: float, residuals, cotangents):
    logits_BTV, targets_BT, allowed_V, n, lse_BT = residuals
    g_loss_BT, g_nll_BT, _ = cotangents  # `correct` has no gradient
    on, off = _smoothing_coefficients(eps, n)
    in_BT = _target_allowed(targets_BT, allowed_V)
    # d loss / dz = p (on + off (n - [t allowed])) - onehot (on - off [t allowed]) - off allowed
    # d nll / dz = p - onehot
    p_coef_BT1 = (g_loss_BT * (on + off * (n - in_BT)) + g_nll_BT)[..., None]
    t_coef_BT1 = (g_loss_BT * (on - off * in_BT) + g_nll_BT)[..., None]
    p_BTV = jnp.exp(logits_BTV.astype(jnp.float32) - lse_BT[..., None])
    index_BTV = jax.lax.broadcasted_iota(jnp.int32, p_BTV.shape, p_BTV.ndim - 1)
    onehot_BTV = index_BTV == targets_BT[..., None]
    d_BTV = p_BTV * p_coef_BT1 - jnp.where(onehot_BTV, t_coef_BT1, 0.0)
    if eps > 0:
        smooth_BT1 = (g_loss_BT * off)[..., None]
        d_BTV = d_BTV - (smooth_BT1 if allowed_V is None else jnp.where(allowed_V, smooth_BT1, 0.0))
    return d_BTV.astype(logits_BTV.dtype), None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _token_losses(logits_BTV, targets_BT, allowed_V, n, eps: float):
    """Per token: (smoothed cross entropy before the entropy constant, NLL, correct)."""
    return _token_losses_fwd(logits_BTV, targets_BT, allowed_V, n, eps)[0]


_token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)
