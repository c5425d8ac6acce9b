"""The MCM target and per-sample loss of Algorithm 1, steps 6-8 (math.md §4), as fused ops.

The reference functions here are the specification and the "reference" backend of the ops "mcm_target",
"mcm_loss" and "mcm_target_loss"; the kernels of csrc/ and kernels/ register beside them (mcm_fast.ops.mcm).
A backend does the work over whole tensors: the target, the per-sample squared distance ||x_hat - x_target||^2
and its gradient. The per-sample pseudo-Huber and weighting act on [B] numbers, so they run here in PyTorch
for every backend, with autograd.
"""
from __future__ import annotations

from numbers import Integral, Real

import torch

from mcm_fast._checks import (
    batch_view,
    check_float_tensor,
    check_like,
    check_order,
    check_range,
    per_sample,
)
from mcm_fast.denoiser import eps_hat
from mcm_fast.ops.registry import dispatch, needs_grad, register
from mcm_fast.schedules import Schedule, alpha_sigma
from mcm_fast.solvers import _alpha_sigma_like, _compute_dtype

LOSSES = ("pseudo_huber", "l2_squared")
MAX_HUBER_EPS = 1e15
MAX_MULTISCALE = 16  # 2x2 poolings: images 65536 pixels on a side


def squared_error(x_hat: torch.Tensor, x: torch.Tensor, multiscale: int = 0) -> torch.Tensor:
    """Per-sample ||x_hat - x||^2 [B], in float32 (float64 for float64 inputs).

    multiscale = m > 0 is simple diffusion's multiscale loss for images: the mean over k = 0..m of
    4^k ||avgpool_{2^k}(x_hat - x)||^2, so each scale counts per pixel of its own resolution.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    delta = x_hat.to(dtype) - x.to(dtype)
    total = delta.flatten(1).square().sum(1)
    for k in range(1, multiscale + 1):
        delta = torch.nn.functional.avg_pool2d(delta, 2)
        total = total + 4**k * delta.flatten(1).square().sum(1)
    return total / (multiscale + 1)


def check_multiscale(multiscale, x: torch.Tensor | None = None) -> int:
    """multiscale must be an int >= 0; with x, its images must halve evenly that many times."""
    if isinstance(multiscale, bool) or not isinstance(multiscale, Integral) or not 0 <= multiscale <= MAX_MULTISCALE:
        raise ValueError(f"multiscale: expected an integer in [0, {MAX_MULTISCALE}], got {multiscale!r}")
    if x is not None and multiscale and (x.dim() != 4 or x.shape[-1] % 2**multiscale or x.shape[-2] % 2**multiscale):
        raise ValueError(f"multiscale: expected [B, C, H, W] images with H and W divisible by {2**multiscale}, "
                         f"got shape {tuple(x.shape)}")
    return int(multiscale)


@register("mcm_target", "reference", differentiable=True)
def mcm_target_reference(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step):
    """x_target = invDDIM_{t->t_step}(DDIM_{s->t_step}(x_ref, z_s), z_t) (Algorithm 1, steps 6-7).

    Where s = t_step the jump is the identity and x_ref is not used (even if it is not finite).
    Reads x_ref, z_s and z_t, writes x_target: 4 tensors' bytes.
    """
    return _target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step).to(x_ref.dtype)


def _target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step):
    """mcm_target_reference in the compute dtype (float32, float64 for float64 inputs), not rounded to x_ref's."""
    dtype = _compute_dtype(x_ref)
    x, zs, zt = x_ref.to(dtype), z_s.to(dtype), z_t.to(dtype)
    alpha_t, sigma_t = _alpha_sigma_like(logsnr_t, x)
    alpha_s, sigma_s = _alpha_sigma_like(logsnr_s, x)
    alpha_q, sigma_q = _alpha_sigma_like(logsnr_step, x)
    z_ref = alpha_q * x + sigma_q * eps_hat(x, zs, alpha_s, sigma_s)  # step 6
    z_ref = torch.where(batch_view(logsnr_s == logsnr_step, x), zs, z_ref)
    ratio = sigma_q / sigma_t
    return (z_ref - ratio * zt) / (alpha_q - alpha_t * ratio)  # step 7


def target_coefficients(logsnr_t, logsnr_s, logsnr_step) -> torch.Tensor:
    """[B, 3] (a, b, c) with x_target = a x_ref + b z_s + c z_t, in float64; a = 0 where s = t_step.

    The same per-sample linear combination the kernels apply, and the gradient of mcm_target.
    """
    alpha_t, sigma_t = alpha_sigma(logsnr_t.double())
    alpha_s, sigma_s = alpha_sigma(logsnr_s.double())
    alpha_q, sigma_q = alpha_sigma(logsnr_step.double())
    identity = logsnr_s == logsnr_step
    q1 = torch.where(identity, torch.ones_like(sigma_q), sigma_q / sigma_s)  # z_ref = k1 x_ref + q1 z_s
    k1 = torch.where(identity, torch.zeros_like(alpha_q), alpha_q - alpha_s * q1)
    ratio = sigma_q / sigma_t
    k = alpha_q - alpha_t * ratio
    return torch.stack([k1 / k, q1 / k, -ratio / k], dim=1)


@register("mcm_loss", "reference", differentiable=True)
def squared_distance_reference(x_hat, target):
    """||x_hat - target||^2 per sample [B]. Reads x_hat and target: 2 tensors' bytes."""
    return squared_error(x_hat, target)


@register("mcm_target_loss", "reference", differentiable=True)
def target_squared_distance_reference(x_hat, x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step):
    """||x_hat - sg(x_target)||^2 per sample [B]: steps 6-8 in one pass over x_hat, x_ref, z_s and z_t."""
    with torch.no_grad():
        target = _target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step)
    return squared_error(x_hat, target)


def robust_loss(dist_sq: torch.Tensor, loss: str, huber_eps: float) -> torch.Tensor:
    """l2_squared: d^2; pseudo_huber: sqrt(d^2 + eps^2) - eps, written without the cancellation at small d."""
    if loss == "l2_squared":
        return dist_sq
    return dist_sq / (torch.sqrt(dist_sq + huber_eps**2) + huber_eps)


def _check_loss_options(loss, huber_eps) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    check_huber_eps(huber_eps)


def check_huber_eps(huber_eps) -> None:
    """huber_eps must be a number in (0, MAX_HUBER_EPS]: its square must stay finite in float32."""
    if isinstance(huber_eps, bool) or not isinstance(huber_eps, Real) or not 0 < huber_eps <= MAX_HUBER_EPS:
        raise ValueError(f"huber_eps: expected a number in (0, {MAX_HUBER_EPS:g}], got {huber_eps!r}")


def _weighted(dist_sq, weight, loss, huber_eps):
    if not isinstance(weight, torch.Tensor):  # a tensor's values are not read: that would sync every step
        check_range("weight", weight, 0, float("inf"))
    weight = per_sample("weight", weight, dist_sq.shape[0], dist_sq.device, dist_sq.dtype)
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


def mcm_target(x_ref, z_s, z_t, t, s, t_step, schedule, backend=None):
    """x_target: the x_hat whose DDIM jump from (z_t, t) to t_step lands where x_ref's jump from (z_s, s) does.

    Algorithm 1, steps 6-7: DDIM_{s->t_step}(x_ref, z_s), then invDDIM_{t->t_step} against z_t; t_step <= s <= t,
    t_step < t, each a float, 0-d or [B] tensor. Differentiable (a per-sample linear map).
    """
    lt, ls, lq = _target_logsnrs(x_ref, z_s, z_t, t, s, t_step, schedule)
    impl = dispatch("mcm_target", x_ref.device, needs_grad(x_ref, z_s, z_t), backend)
    return impl(x_ref, z_s, z_t, lt, ls, lq)


def mcm_loss(x_hat, target, weight=1.0, loss="pseudo_huber", huber_eps=1e-4, backend=None):
    """Per-sample weight * rho(||x_hat - target||^2) [B] (Algorithm 1, step 8), rho = pseudo-Huber or identity.

    weight: a float or a [B] tensor (e.g. SNR(t) + 1). Float32 result (float64 for float64 inputs);
    differentiable in x_hat, target and weight.
    """
    check_float_tensor("x_hat", x_hat)
    check_like("target", target, "x_hat", x_hat)
    _check_loss_options(loss, huber_eps)
    impl = dispatch("mcm_loss", x_hat.device, needs_grad(x_hat, target), backend)
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
    impl = dispatch("mcm_target_loss", x_hat.device, needs_grad(x_hat), backend)
    return _weighted(impl(x_hat, x_ref, z_s, z_t, lt, ls, lq), weight, loss, huber_eps)
