"""The public steps: DDIM, aDDIM, invDDIM, Euler and Heun from t to s (math.md §2-3).

Each checks its arguments once, turns t and s into per-sample logSNRs and calls the formula of
mcm_fast.solvers or, for DDIM and aDDIM, the kernel the registry picks. A step goes from the noisier t to the
cleaner s <= t; t and s are floats, 0-d tensors or [B] tensors. Inner loops whose inputs are already checked
(the samplers, Algorithm 1) call ddim_unchecked and addim_unchecked on logSNRs: no check reads a tensor back.
"""
from __future__ import annotations

import torch

import mcm_fast.ops.ddim  # noqa: F401  (registers the backends dispatched here)
from mcm_fast._checks import check_float_tensor, check_like, check_order, check_range, per_sample
from mcm_fast.ops.registry import dispatch, needs_grad
from mcm_fast.schedules import Schedule
from mcm_fast.solvers import analytic_x_var, euler_step_reference, heun_step_reference, inv_ddim_reference


def step_logsnrs(first, z_t, t, s, schedule, strict: bool, first_name: str = "x_hat"):
    """Checks the arguments of a step t -> s and returns the per-sample logSNRs ([B] each)."""
    check_float_tensor(first_name, first)
    if z_t is not first:
        check_like("z_t", z_t, first_name, first)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
    t_vec = per_sample("t", t, first.shape[0], first.device)
    s_vec = per_sample("s", s, first.shape[0], first.device)
    for name, value, vec in (("t", t, t_vec), ("s", s, s_vec)):  # Python numbers are checked even when compiling
        check_range(name, vec if isinstance(value, torch.Tensor) else value, 0.0, 1.0)
    check_order(s, t, s_vec, t_vec, strict)
    return schedule.logsnr_unchecked(t_vec), schedule.logsnr_unchecked(s_vec)


def ddim_unchecked(x_hat, z_t, logsnr_t, logsnr_s, backend=None):
    """DDIM on per-sample logSNRs [B], for callers that have checked their inputs."""
    impl = dispatch("ddim_step", x_hat.device, needs_grad(x_hat, z_t), backend)
    return impl(x_hat, z_t, logsnr_t, logsnr_s)


def addim_unchecked(x_hat, z_t, logsnr_t, logsnr_s, x_var, backend=None):
    """aDDIM on per-sample logSNRs and x_var [B], for callers that have checked their inputs."""
    impl = dispatch("addim_step", x_hat.device, needs_grad(x_hat, z_t, x_var), backend)
    return impl(x_hat, z_t, logsnr_t, logsnr_s, x_var)


def ddim_step(x_hat, z_t, t, s, schedule, backend=None):
    """DDIM_{t->s}(x_hat, z_t) = alpha_s x_hat + sigma_s eps_hat (math.md §2); s = t returns z_t."""
    logsnr_t, logsnr_s = step_logsnrs(x_hat, z_t, t, s, schedule, strict=False)
    return ddim_unchecked(x_hat, z_t, logsnr_t, logsnr_s, backend)


def addim_step(x_hat, z_t, t, s, schedule, x_var, backend=None):
    """Adjusted DDIM (math.md §3): DDIM plus the posterior variance x_var put back along eps_hat.

    x_var: per-dimension posterior variance, a float, a [B] tensor, or "analytic" for 0.1 / (2 + SNR(t)).
    """
    logsnr_t, logsnr_s = step_logsnrs(x_hat, z_t, t, s, schedule, strict=False)
    if isinstance(x_var, str):
        if x_var != "analytic":
            raise ValueError(f"x_var: expected a float, a [B] tensor or 'analytic', got {x_var!r}")
        x_var = analytic_x_var(logsnr_t)
    x_var = per_sample("x_var", x_var, x_hat.shape[0], x_hat.device)
    check_range("x_var", x_var, 0.0, float("inf"))
    return addim_unchecked(x_hat, z_t, logsnr_t, logsnr_s, x_var, backend)


def inv_ddim(z_s, z_t, t, s, schedule):
    """invDDIM_{t->s}(z_s, z_t): the x_hat whose DDIM step from z_t lands on z_s; needs s < t (math.md §2).

    x = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - alpha_t sigma_s / sigma_t). The denominator vanishes as
    s -> t, so the inverse is meant for gaps of at least one segment (MCM's t -> t_step).
    """
    logsnr_t, logsnr_s = step_logsnrs(z_s, z_t, t, s, schedule, strict=True, first_name="z_s")
    return inv_ddim_reference(z_s, z_t, logsnr_t, logsnr_s)


def euler_step(x_hat, z_t, t, s, schedule):
    """One Euler step of the probability-flow ODE in logSNR time from t to s (first order).

    Unlike DDIM (exact when x_hat is constant along the path) it is the plain Euler rule, a teacher option.
    """
    logsnr_t, logsnr_s = step_logsnrs(x_hat, z_t, t, s, schedule, strict=False)
    return euler_step_reference(x_hat, z_t, logsnr_t, logsnr_s)


def heun_step(model, z_t, t, s, schedule, x_hat=None, **cond):
    """One Heun step (second order, two model calls) of the probability-flow ODE in logSNR time.

    model(z, t, **cond) -> x_hat, e.g. a Denoiser; x_hat, when given, is model(z_t, t) already computed.
    """
    if not callable(model):
        raise TypeError(f"model: expected a callable model(z_t, t, **cond) -> x_hat, got {type(model).__name__}")
    logsnr_t, logsnr_s = step_logsnrs(z_t, z_t, t, s, schedule, strict=False, first_name="z_t")
    if x_hat is None:
        x_hat = model(z_t, t, **cond)
    else:
        check_like("x_hat", x_hat, "z_t", z_t)
    return heun_step_reference(model, x_hat, z_t, s, logsnr_t, logsnr_s, **cond)
