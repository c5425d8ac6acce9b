"""Closed forms for Gaussian data x ~ N(0, c^2 I) under the cosine schedule (math.md §7), written from the
formulas directly (not with the package) so that tests can judge the package against them. Float64; t is a
float or a [B] tensor; shift is the ratio r / res of a shifted schedule (1 for the plain cosine)."""
import math

import torch

C = 0.7  # data standard deviation
T_MIN = math.atan(math.exp(-7.5)) * 2 / math.pi  # logSNR clip at +-15


def logsnr(t, shift=1.0):
    """-2 log tan(pi u / 2) + 2 log(shift), u = t_min + t (1 - 2 t_min)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return -2 * torch.log(torch.tan(math.pi * (T_MIN + t * (1 - 2 * T_MIN)) / 2)) + 2 * math.log(shift)


def alpha_sigma(t, shift=1.0):
    lam = logsnr(t, shift)
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def per_sample(v, like):
    """A [B] (or 0-d) tensor viewed to broadcast against like [B, ...]."""
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


def marginal_var(t, shift=1.0):
    """v_t = alpha_t^2 c^2 + sigma_t^2."""
    alpha, sigma = alpha_sigma(t, shift)
    return alpha**2 * C**2 + sigma**2


def exact_denoiser(z, t, shift=1.0):
    """E[x | z_t] = alpha_t c^2 z / v_t."""
    alpha, _ = alpha_sigma(t, shift)
    return (per_sample(alpha * C**2 / marginal_var(t, shift), z) * z.double()).to(z.dtype)


def posterior_var(t, shift=1.0):
    """Var[x | z_t] per dimension = c^2 sigma_t^2 / v_t."""
    _, sigma = alpha_sigma(t, shift)
    return C**2 * sigma**2 / marginal_var(t, shift)


def exact_flow(z_t, t, s, shift=1.0):
    """The probability-flow map z_s = z_t sqrt(v_s / v_t)."""
    return per_sample(torch.sqrt(marginal_var(s, shift) / marginal_var(t, shift)), z_t) * z_t


def inv_ddim(z_s, z_t, t, s, shift=1.0):
    """x with DDIM_{t->s}(x, z_t) = z_s: (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - alpha_t sigma_s / sigma_t)."""
    (alpha_t, sigma_t), (alpha_s, sigma_s) = alpha_sigma(t, shift), alpha_sigma(s, shift)
    ratio = per_sample(sigma_s / sigma_t, z_t)
    return (z_s - ratio * z_t) / (per_sample(alpha_s, z_t) - per_sample(alpha_t, z_t) * ratio)


def segment_start(t, steps, edges=None):
    """t_step = (ceil(t S) - 1) / S: the start of the segment (t_step, t_step + 1/S] holding t; with edges
    (ascending, 0 to 1), the largest edge below t. -1/S (or -1) at t = 0, which lies in no segment."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if edges is None:
        return (torch.ceil(t * steps - 1e-9) - 1) / steps
    index = torch.searchsorted(edges, t - 1e-12) - 1
    return torch.where(index < 0, -1.0, edges[index.clamp(min=0)])


def logsnr_edges(steps):
    """The S + 1 segment edges uniform in logSNR from +15 to -15, through the cosine's inverse by hand."""
    lam = torch.linspace(15.0, -15.0, steps + 1, dtype=torch.float64)
    return (torch.atan(torch.exp(-lam / 2)) * 2 / math.pi - T_MIN) / (1 - 2 * T_MIN)


def consistency_function(steps, shift=1.0, edges=None):
    """The exact multistep consistency function f*(z_t, t) = invDDIM_{t->t_step}(z_t sqrt(v_{t_step} / v_t), z_t),
    for segments k / S or between the given edges."""

    def f_star(z, t, **cond):
        t_step = segment_start(t, steps, edges)
        at_zero = per_sample(t_step < 0, z)  # t = 0 holds no segment: f(z, 0) = E[x | z_0] (the boundary)
        t_step = t_step.clamp(min=0)  # (where t = 0 the jump below is 0 / 0 and not selected)
        jump = inv_ddim(exact_flow(z.double(), t, t_step, shift), z.double(), t, t_step, shift)
        return torch.where(at_zero, exact_denoiser(z.double(), t, shift), jump).to(z.dtype)

    return f_star
