"""The MCM target and per-sample loss of Algorithm 1, steps 6-8 (math.md §4): formulas only.

The reference functions here are the specification and the "reference" backend of the ops "mcm_target",
"mcm_sqdist" and "mcm_target_sqdist" (mcm_fast.ops.mcm_loss registers them beside the kernels of csrc/ and kernels/).
A backend does the work over whole tensors: the target, the per-sample squared distance ||x_hat - x_target||^2
and its gradient. The per-sample pseudo-Huber and weighting act on [B] numbers (robust_loss), so they run in
PyTorch for every backend, with autograd; the public, checked functions are in mcm_fast.ops.mcm_loss.
"""
from __future__ import annotations

from numbers import Real

import torch

from mcm_fast._checks import batch_view, check_int, compute_dtype
from mcm_fast.denoiser import eps_hat
from mcm_fast.schedules import alpha_sigma
from mcm_fast.solvers import alpha_sigma_like

LOSSES = ("pseudo_huber", "l2_squared")
MAX_HUBER_EPS = 1e15
MAX_MULTISCALE = 16  # 2x2 poolings: images 65536 pixels on a side


def squared_error(x_hat: torch.Tensor, x: torch.Tensor, multiscale: int = 0) -> torch.Tensor:
    """Per-sample ||x_hat - x||^2 [B], in float32 (float64 for float64 inputs).

    multiscale = m > 0 is simple diffusion's multiscale loss for images: the mean over k = 0..m of
    4^k ||avgpool_{2^k}(x_hat - x)||^2, so each scale counts per pixel of its own resolution.
    """
    dtype = compute_dtype(x)
    delta = x_hat.to(dtype) - x.to(dtype)
    total = delta.flatten(1).square().sum(1)
    for k in range(1, multiscale + 1):
        delta = torch.nn.functional.avg_pool2d(delta, 2)
        total = total + 4**k * delta.flatten(1).square().sum(1)
    return total / (multiscale + 1)


def check_multiscale(multiscale, x: torch.Tensor | None = None) -> int:
    """multiscale must be an int >= 0; with x, its images must halve evenly that many times."""
    check_int("multiscale", multiscale, 0, MAX_MULTISCALE)
    if x is not None and multiscale and (x.dim() != 4 or x.shape[-1] % 2**multiscale or x.shape[-2] % 2**multiscale):
        raise ValueError(f"multiscale: expected [B, C, H, W] images with H and W divisible by {2**multiscale}, "
                         f"got shape {tuple(x.shape)}")
    return int(multiscale)


def mcm_target_reference(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step):
    """x_target = invDDIM_{t->t_step}(DDIM_{s->t_step}(x_ref, z_s), z_t) (Algorithm 1, steps 6-7).

    Where s = t_step the jump is the identity and x_ref is not used (even if it is not finite).
    Reads x_ref, z_s and z_t, writes x_target: 4 tensors' bytes.
    """
    return _target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step).to(x_ref.dtype)


def _target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step):
    """mcm_target_reference in the compute dtype (float32, float64 for float64 inputs), not rounded to x_ref's."""
    dtype = compute_dtype(x_ref)
    x, zs, zt = x_ref.to(dtype), z_s.to(dtype), z_t.to(dtype)
    alpha_t, sigma_t = alpha_sigma_like(logsnr_t, x)
    alpha_s, sigma_s = alpha_sigma_like(logsnr_s, x)
    alpha_q, sigma_q = alpha_sigma_like(logsnr_step, x)
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


def squared_distance_reference(x_hat, target):
    """||x_hat - target||^2 per sample [B]. Reads x_hat and target: 2 tensors' bytes."""
    return squared_error(x_hat, target)


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


def check_huber_eps(huber_eps) -> None:
    """huber_eps must be a number in (0, MAX_HUBER_EPS]: its square must stay finite in float32."""
    if isinstance(huber_eps, bool) or not isinstance(huber_eps, Real) or not 0 < huber_eps <= MAX_HUBER_EPS:
        raise ValueError(f"huber_eps: expected a number in (0, {MAX_HUBER_EPS:g}], got {huber_eps!r}")
