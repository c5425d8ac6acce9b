"""The teacher's integrators: one step t -> s of the probability-flow ODE (or the DDPM posterior) from
x_hat = model(z_t, t), in the one table the teacher samplers (sample_diffusion), Algorithm 1's teacher step and
the diffusers schedulers share (math.md §2-3).

Every integrator takes (x_hat, z_t, s, logsnr_t, logsnr_s) with the per-sample times s and logSNRs ([B]), and
the keywords: model and cond (Heun's second call, at s), x_var (aDDIM: a callable giving the [B] variance at t,
called only by aDDIM), generator (ancestral sampling's noise) and backend (the DDIM and aDDIM kernels). The
inputs are the caller's, already checked.
"""
from __future__ import annotations

import torch

from mcm_fast.ops.steps import addim_unchecked, ddim_unchecked
from mcm_fast.solvers import ancestral_step_reference, euler_step_reference, heun_step_reference


def endpoint_x_var(x_var: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """aDDIM's x_var for steps into s ([B] each): 0 where s = 0, so that a step into the data is a DDIM step.

    The variance aDDIM puts back along eps_hat is meant for the next denoiser call, which turns it into detail;
    a step into s = 0 has no next call, so it would stay as white noise in the sample (as DDPM's posterior
    variance vanishes at s = 0, its last step returns x_hat). Every aDDIM step below applies it; addim_step
    itself keeps the formula of math.md §3.
    """
    return torch.where(s == 0, torch.zeros_like(x_var), x_var)


def ddim(x_hat, z_t, s, logsnr_t, logsnr_s, *, model=None, cond=None, x_var=None, generator=None, backend=None):
    """DDIM: exact when x_hat is constant along the path (math.md §2)."""
    return ddim_unchecked(x_hat, z_t, logsnr_t, logsnr_s, backend)


def addim(x_hat, z_t, s, logsnr_t, logsnr_s, *, model=None, cond=None, x_var=None, generator=None, backend=None):
    """Adjusted DDIM with the variance x_var() at t, 0 into s = 0 (math.md §3)."""
    return addim_unchecked(x_hat, z_t, logsnr_t, logsnr_s, endpoint_x_var(x_var(), s), backend)


def euler(x_hat, z_t, s, logsnr_t, logsnr_s, *, model=None, cond=None, x_var=None, generator=None, backend=None):
    """The plain Euler rule in logSNR time (first order)."""
    return euler_step_reference(x_hat, z_t, logsnr_t, logsnr_s)


def heun(x_hat, z_t, s, logsnr_t, logsnr_s, *, model=None, cond=None, x_var=None, generator=None, backend=None):
    """Heun's rule in logSNR time (second order): a second call model(z_euler, s, **cond)."""
    return heun_step_reference(model, x_hat, z_t, s, logsnr_t, logsnr_s, **(cond or {}))


def ancestral(x_hat, z_t, s, logsnr_t, logsnr_s, *, model=None, cond=None, x_var=None, generator=None,
              backend=None):
    """A draw from the DDPM posterior q(z_s | z_t, x = x_hat), with float64 noise from generator."""
    noise = torch.randn(z_t.shape, generator=generator, device=z_t.device, dtype=torch.float64)
    return ancestral_step_reference(x_hat, z_t, logsnr_t, logsnr_s, noise)


INTEGRATORS = {"ddim": ddim, "addim": addim, "euler": euler, "heun": heun, "ancestral": ancestral}
