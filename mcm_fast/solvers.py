"""DDIM, its inverse, adjusted DDIM and Euler/Heun steps (math.md §2-3), in plain PyTorch: formulas only.

Every function takes per-sample logSNRs ([B]). The *_reference functions are the specification every fused
kernel is tested against and the "reference" backend; the *_backward ones are the closed-form gradients of the
fused ops. The public steps (mcm_fast.ops.steps) check their arguments, turn t and s into logSNRs and call
these or a kernel. Arithmetic is float32 for float16/bfloat16/float32 data, float64 for float64.
"""
from __future__ import annotations

import math

import torch

from mcm_fast._checks import batch_view, check_float_tensor, compute_dtype
from mcm_fast.denoiser import eps_hat
from mcm_fast.schedules import alpha_sigma


def alpha_sigma_like(logsnr: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, sigma of a [B] logSNR as [B, 1, ..., 1] views in x's compute dtype."""
    alpha, sigma = alpha_sigma(logsnr.to(compute_dtype(x)))
    return batch_view(alpha, x), batch_view(sigma, x)


def analytic_x_var(logsnr_t: torch.Tensor) -> torch.Tensor:
    """x_var = 0.1 / (2 + SNR(t)): 10% of the posterior variance under a N(0, 0.5) prior (math.md §3)."""
    check_float_tensor("logsnr_t", logsnr_t, min_dim=0)
    return 0.1 / (2 + torch.exp(logsnr_t))


def ddim_step_reference(x_hat, z_t, logsnr_t, logsnr_s):
    """z_s = alpha_s x_hat + sigma_s eps_hat (math.md §2). Reads x_hat and z_t, writes z_s: 3 tensors' bytes."""
    dtype = compute_dtype(x_hat)
    x, z = x_hat.to(dtype), z_t.to(dtype)
    alpha_t, sigma_t = alpha_sigma_like(logsnr_t, x)
    alpha_s, sigma_s = alpha_sigma_like(logsnr_s, x)
    return (alpha_s * x + sigma_s * eps_hat(x, z, alpha_t, sigma_t)).to(x_hat.dtype)


def _addim_terms(x, z, logsnr_t, logsnr_s, x_var):
    """(alpha_t, sigma_t, alpha_s, eps_hat, ||eps_hat||^2, d K^2, c) of aDDIM, per sample as [B, 1, ...] views.

    Where x_var = 0 the norm is replaced by 1 if it is 0, so c = sigma_s exactly and no 0 / 0 appears.
    """
    alpha_t, sigma_t = alpha_sigma_like(logsnr_t, x)
    alpha_s, sigma_s = alpha_sigma_like(logsnr_s, x)
    e = eps_hat(x, z, alpha_t, sigma_t)
    norm_sq = batch_view(e.flatten(1).square().sum(1), x)
    var = batch_view(x_var.to(x.dtype), x)
    norm_sq = torch.where((var == 0) & (norm_sq == 0), torch.ones_like(norm_sq), norm_sq)
    dk_sq = math.prod(x.shape[1:]) * (alpha_s - alpha_t * sigma_s / sigma_t) ** 2
    c = torch.sqrt(sigma_s**2 + dk_sq * var / norm_sq)
    return alpha_t, sigma_t, alpha_s, e, norm_sq, dk_sq, c


def addim_step_reference(x_hat, z_t, logsnr_t, logsnr_s, x_var):
    """z_s = alpha_s x_hat + c eps_hat, c^2 = sigma_s^2 + d K^2 x_var / ||eps_hat||^2 (math.md §3).

    K = alpha_s - alpha_t sigma_s / sigma_t; ||eps_hat||^2 is per sample; x_var = 0 gives DDIM exactly.
    Reads x_hat and z_t, writes z_s: 3 tensors' bytes (plus a [B] reduction).
    """
    dtype = compute_dtype(x_hat)
    x, z = x_hat.to(dtype), z_t.to(dtype)
    _, _, alpha_s, e, _, _, c = _addim_terms(x, z, logsnr_t, logsnr_s, x_var)
    return (alpha_s * x + c * e).to(x_hat.dtype)


def addim_step_backward(grad, x_hat, z_t, logsnr_t, logsnr_s, x_var):
    """Gradients of aDDIM for x_hat, z_t and x_var, in closed form (the backward of the fused kernels).

    With g = dL/dz_s: dL/deps_hat = c g - (g . eps_hat) d K^2 x_var eps_hat / (c ||eps_hat||^4),
    dL/dx_hat = alpha_s g - (alpha_t / sigma_t) dL/deps_hat, dL/dz_t = dL/deps_hat / sigma_t and
    dL/dx_var = (g . eps_hat) d K^2 / (2 c ||eps_hat||^2).
    """
    dtype = compute_dtype(x_hat)
    x, z, g = x_hat.to(dtype), z_t.to(dtype), grad.to(dtype)
    alpha_t, sigma_t, alpha_s, e, norm_sq, dk_sq, c = _addim_terms(x, z, logsnr_t, logsnr_s, x_var)
    g_dot_e = batch_view((g * e).flatten(1).sum(1), x)
    var = batch_view(x_var.to(dtype), x)
    grad_e = c * g - g_dot_e * dk_sq * var * e / (c * norm_sq**2)
    grad_x = alpha_s * g - alpha_t / sigma_t * grad_e
    grad_var = (g_dot_e * dk_sq / (2 * c * norm_sq)).flatten()
    return grad_x.to(x_hat.dtype), (grad_e / sigma_t).to(z_t.dtype), grad_var.to(x_var.dtype)


def ddim_step_backward(grad, logsnr_t, logsnr_s):
    """Gradients of DDIM for x_hat and z_t: K g and (sigma_s / sigma_t) g, K = alpha_s - alpha_t sigma_s / sigma_t."""
    g = grad.to(compute_dtype(grad))
    alpha_t, sigma_t = alpha_sigma_like(logsnr_t, g)
    alpha_s, sigma_s = alpha_sigma_like(logsnr_s, g)
    ratio = sigma_s / sigma_t
    return ((alpha_s - alpha_t * ratio) * g).to(grad.dtype), (ratio * g).to(grad.dtype)


def inv_ddim_reference(z_s, z_t, logsnr_t, logsnr_s):
    """invDDIM_{t->s}(z_s, z_t) = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - alpha_t sigma_s / sigma_t) (math.md §2).

    The denominator vanishes as s -> t, so the inverse is meant for gaps of at least one segment.
    """
    dtype = compute_dtype(z_s)
    zs, zt = z_s.to(dtype), z_t.to(dtype)
    alpha_t, sigma_t = alpha_sigma_like(logsnr_t, zs)
    alpha_s, sigma_s = alpha_sigma_like(logsnr_s, zs)
    ratio = sigma_s / sigma_t
    return ((zs - ratio * zt) / (alpha_s - alpha_t * ratio)).to(z_s.dtype)


def _flow_slope(x_hat, z, logsnr):
    """dz/dlambda = alpha (x_hat - alpha z) / 2: the probability-flow ODE in logSNR time.

    From x~ = z / alpha and dx~/dsigma~ = eps_hat with sigma~ = sigma / alpha = exp(-lambda / 2).
    """
    alpha, _ = alpha_sigma_like(logsnr, z)
    return alpha * (x_hat - alpha * z) / 2


def euler_step_reference(x_hat, z_t, logsnr_t, logsnr_s):
    """One Euler step of the probability-flow ODE in logSNR time (first order; DDIM is exact when x_hat is
    constant along the path, this is the plain Euler rule)."""
    dtype = compute_dtype(z_t)
    x, z = x_hat.to(dtype), z_t.to(dtype)
    h = batch_view((logsnr_s - logsnr_t).to(dtype), z)
    return (z + h * _flow_slope(x, z, logsnr_t)).to(z_t.dtype)


def heun_step_reference(model, x_hat, z_t, s, logsnr_t, logsnr_s, **cond):
    """One Heun step (second order) of the probability-flow ODE in logSNR time: x_hat = model(z_t, t) is given,
    the second model call is at (the Euler point, s)."""
    dtype = compute_dtype(z_t)
    z = z_t.to(dtype)
    h = batch_view((logsnr_s - logsnr_t).to(dtype), z)
    slope_t = _flow_slope(x_hat.to(dtype), z, logsnr_t)
    z_euler = z + h * slope_t
    slope_s = _flow_slope(model(z_euler.to(z_t.dtype), s, **cond).to(dtype), z_euler, logsnr_s)
    return (z + h * (slope_t + slope_s) / 2).to(z_t.dtype)


def ancestral_step_reference(x_hat, z_t, logsnr_t, logsnr_s, noise):
    """z_s ~ q(z_s | z_t, x = x_hat), the DDPM posterior, with the given float64 standard normal noise: mean
    alpha_{t|s} sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x_hat, variance
    sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (computed in float64)."""
    alpha_t, sigma_t = (batch_view(v, z_t) for v in alpha_sigma(logsnr_t.double()))
    alpha_s, sigma_s = (batch_view(v, z_t) for v in alpha_sigma(logsnr_s.double()))
    alpha_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    mean = alpha_ts * sigma_s**2 / sigma_t**2 * z_t + alpha_s * var_ts / sigma_t**2 * x_hat
    std = (var_ts * sigma_s**2 / sigma_t**2).clamp(min=0).sqrt()  # clamp: rounding at s = t, never a real negative
    return (mean + std * noise).to(z_t.dtype)
