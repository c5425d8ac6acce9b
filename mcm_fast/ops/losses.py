"""The public MCM target and loss of Algorithm 1, steps 6-8 (math.md §4): mcm_target, mcm_loss, mcm_target_loss.

Each checks its arguments once, turns t, s and t_step into per-sample logSNRs, has the backend the registry
picks compute the target or the squared distances ||x_hat - x_target||^2 [B], and applies the pseudo-Huber and
weighting of mcm_fast.losses on those [B] numbers. Algorithm 1's loop, whose inputs are already checked,
calls target_unchecked and target_loss_unchecked on logSNRs: no check reads a tensor back.
"""
from __future__ import annotations

import torch

import mcm_fast.ops.mcm  # noqa: F401  (registers the backends dispatched here)
from mcm_fast._checks import check_float_tensor, check_like, check_order, check_range, per_sample
from mcm_fast.losses import LOSSES, check_huber_eps, robust_loss
from mcm_fast.ops.registry import dispatch, needs_grad
from mcm_fast.schedules import Schedule


def _check_loss_options(loss, huber_eps) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    check_huber_eps(huber_eps)


def _weight(weight, x: torch.Tensor) -> torch.Tensor:
    """The per-sample weight [B]: a float or a [B] tensor (whose values are not read: that would sync every step)."""
    if not isinstance(weight, torch.Tensor):
        check_range("weight", weight, 0, float("inf"))
    return per_sample("weight", weight, x.shape[0], x.device)


def _weighted(dist_sq, weight, loss, huber_eps):
    """weight * rho(dist_sq) [B] in dist_sq's dtype."""
    return weight.to(dist_sq.dtype) * robust_loss(dist_sq, loss, float(huber_eps))  # float: an int may overflow


def _target_logsnrs(x_ref, z_s, z_t, t, s, t_step, schedule):
    """Checks t_step <= s <= t and t_step < t per sample; returns the three [B] logSNRs."""
    check_float_tensor("x_ref", x_ref)
    check_like("z_s", z_s, "x_ref", x_ref)
    check_like("z_t", z_t, "x_ref", x_ref)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
    batch, device = x_ref.shape[0], x_ref.device
    vecs = {name: per_sample(name, v, batch, device) for name, v in (("t", t), ("s", s), ("t_step", t_step))}
    for name, value in (("t", t), ("s", s), ("t_step", t_step)):
        check_range(name, vecs[name] if isinstance(value, torch.Tensor) else value, 0.0, 1.0)
    check_order(s, t, vecs["s"], vecs["t"], strict=False)
    try:
        check_order(t_step, s, vecs["t_step"], vecs["s"], strict=False)
        check_order(t_step, t, vecs["t_step"], vecs["t"], strict=True)
    except ValueError as error:
        raise ValueError(f"t_step: expected t_step <= s and t_step < t ({error})") from None
    return tuple(schedule.logsnr_unchecked(vecs[name]) for name in ("t", "s", "t_step"))


def target_unchecked(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step, backend=None):
    """mcm_target on per-sample logSNRs [B], for callers that have checked their inputs."""
    impl = dispatch("mcm_target", x_ref.device, needs_grad(x_ref, z_s, z_t), backend)
    return impl(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step)


def target_loss_unchecked(x_hat, x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step, weight: torch.Tensor,
                          loss: str, huber_eps: float, backend=None):
    """mcm_target_loss on per-sample logSNRs and weight [B], for callers that have checked their inputs."""
    impl = dispatch("mcm_target_sqdist", x_hat.device, needs_grad(x_hat), backend)
    return _weighted(impl(x_hat, x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step), weight, loss, huber_eps)


def mcm_target(x_ref, z_s, z_t, t, s, t_step, schedule, backend=None):
    """x_target: the x_hat whose DDIM jump from (z_t, t) to t_step lands where x_ref's jump from (z_s, s) does.

    Algorithm 1, steps 6-7: DDIM_{s->t_step}(x_ref, z_s), then invDDIM_{t->t_step} against z_t; t_step <= s <= t,
    t_step < t, each a float, 0-d or [B] tensor. Differentiable (a per-sample linear map).
    """
    return target_unchecked(x_ref, z_s, z_t, *_target_logsnrs(x_ref, z_s, z_t, t, s, t_step, schedule), backend)


def mcm_loss(x_hat, target, weight=1.0, loss="pseudo_huber", huber_eps=1e-4, backend=None):
    """Per-sample weight * rho(||x_hat - target||^2) [B] (Algorithm 1, step 8), rho = pseudo-Huber or identity.

    weight: a float or a [B] tensor (e.g. SNR(t) + 1). Float32 result (float64 for float64 inputs);
    differentiable in x_hat, target and weight.
    """
    check_float_tensor("x_hat", x_hat)
    check_like("target", target, "x_hat", x_hat)
    _check_loss_options(loss, huber_eps)
    weight = _weight(weight, x_hat)
    impl = dispatch("mcm_sqdist", x_hat.device, needs_grad(x_hat, target), backend)
    return _weighted(impl(x_hat, target), weight, loss, huber_eps)


def mcm_target_loss(x_hat, x_ref, z_s, z_t, t, s, t_step, schedule, weight=1.0, loss="pseudo_huber",
                    huber_eps=1e-4, backend=None):
    """mcm_loss(x_hat, sg(mcm_target(x_ref, z_s, z_t, t, s, t_step))) in one pass, the target never stored.

    The target is a stop-gradient (Algorithm 1): gradients flow to x_hat and weight only.
    """
    check_float_tensor("x_hat", x_hat)
    lt, ls, lq = _target_logsnrs(x_ref, z_s, z_t, t, s, t_step, schedule)
    check_like("x_hat", x_hat, "x_ref", x_ref)
    _check_loss_options(loss, huber_eps)
    return target_loss_unchecked(x_hat, x_ref, z_s, z_t, lt, ls, lq, _weight(weight, x_hat), loss, huber_eps, backend)
