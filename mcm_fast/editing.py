"""Zero-shot editing with multistep consistency sampling: each step's x_hat is projected onto the edit's
constraint before the DDIM jump (the multistep form of Song et al. 2023, §6 and Algorithm 4).

The jumps land on the model's segment edges: uniform in t, or in logSNR with boundaries="logsnr" (as the
student was trained; mf.sample takes the same argument)."""
from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

from mcm_fast._checks import MAX_ELEMENTS, check_batch, check_float_tensor, check_int, check_like
from mcm_fast.sampling import consistency_jumps, prepare, sample
from mcm_fast.schedules import SPACINGS


def _segment_starts(schedule, n_steps: int, boundaries: str) -> list[float]:
    """The n_steps + 1 segment edges from 1 down to 0 (Python floats)."""
    if boundaries not in SPACINGS:
        raise ValueError(f"boundaries: expected one of {SPACINGS}, got {boundaries!r}")
    return schedule.falling_edges(n_steps, boundaries)


@torch.no_grad()
def inpaint(model, x_known: torch.Tensor, mask: torch.Tensor, n_steps: int = 4, schedule=None, noise=None,
            generator=None, boundaries: str = "t", **cond) -> torch.Tensor:
    """Fills the pixels where mask = 0 and keeps x_known where mask = 1 (exactly, in the result)."""
    check_batch("x_known", x_known)
    check_float_tensor("mask", mask, min_dim=0)
    try:
        torch.broadcast_shapes(mask.shape, x_known.shape)
    except RuntimeError:
        raise ValueError(f"mask: expected a shape that broadcasts to {tuple(x_known.shape)}, got "
                         f"{tuple(mask.shape)}") from None
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask: expected values 0 (to fill) or 1 (known)")
    mask = mask.to(x_known.dtype)
    model, schedule, z = prepare(model, n_steps, x_known.shape, schedule, noise, generator, 0.0, None, cond,
                                x_known.device, x_known.dtype)
    check_like("noise", z, "x_known", x_known)
    project = lambda x_hat: mask * x_known + (1 - mask) * x_hat  # noqa: E731
    return consistency_jumps(model, z, _segment_starts(schedule, n_steps, boundaries), schedule, project=project,
                             **cond)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling over the last two dims by `factor`, the degradation super-resolution inverts."""
    return F.avg_pool2d(x, factor)


@torch.no_grad()
def super_resolve(model, x_low: torch.Tensor, factor: int, n_steps: int = 4, schedule=None, noise=None,
                  generator=None, boundaries: str = "t", **cond) -> torch.Tensor:
    """An image whose factor x factor block means equal x_low ([B, C, H, W] -> [B, C, factor H, factor W])."""
    check_float_tensor("x_low", x_low, min_dim=4)
    factor = check_int("factor", factor, 1)
    shape = (*x_low.shape[:-2], x_low.shape[-2] * factor, x_low.shape[-1] * factor)
    if math.prod(shape) > MAX_ELEMENTS:
        raise ValueError(f"factor: expected an output of at most {MAX_ELEMENTS} elements, got shape {shape}")
    up = lambda y: y.repeat_interleave(factor, -2).repeat_interleave(factor, -1)  # noqa: E731
    low_up = up(x_low)
    model, schedule, z = prepare(model, n_steps, shape, schedule, noise, generator, 0.0, None, cond, x_low.device,
                                x_low.dtype)
    # replace the block means of x_hat by x_low's: down(project(x)) = x_low exactly
    project = lambda x_hat: x_hat - up(downsample(x_hat, factor)) + low_up  # noqa: E731
    return consistency_jumps(model, z, _segment_starts(schedule, n_steps, boundaries), schedule, project=project,
                             **cond)


@torch.no_grad()
def sdedit(model, x_guide: torch.Tensor, t_start: float, n_steps: int = 4, schedule=None, noise=None,
           generator=None, boundaries: str = "t", **cond) -> torch.Tensor:
    """SDEdit: noise x_guide to t_start, then jump through the segment starts below it (k / n_steps, or the
    logSNR-uniform edges)."""
    check_float_tensor("x_guide", x_guide)
    if isinstance(t_start, bool) or not isinstance(t_start, Real) or not 0 < t_start <= 1:
        raise ValueError(f"t_start: expected a time in (0, 1], got {t_start!r}")
    n_steps = check_int("n_steps", n_steps, 1)
    model, schedule, eps = prepare(model, n_steps, x_guide.shape, schedule, noise, generator, 0.0, None, cond,
                                  x_guide.device, x_guide.dtype)
    alpha, sigma = schedule.alpha_sigma(float(t_start))
    z = (alpha * x_guide.double() + sigma * eps.double()).to(x_guide.dtype)
    starts = [e for e in _segment_starts(schedule, n_steps, boundaries) if e < t_start - 1e-9 / n_steps]
    return consistency_jumps(model, z, [float(t_start)] + starts, schedule, **cond)  # from the start just below t_start


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation between noises a and b per sample: weight 0 gives a, 1 gives b."""
    check_float_tensor("a", a)
    check_like("b", b, "a", a)
    if isinstance(weight, bool) or not isinstance(weight, Real) or not 0 <= weight <= 1:
        raise ValueError(f"weight: expected a number in [0, 1], got {weight!r}")
    a64, b64 = a.flatten(1).double(), b.flatten(1).double()
    cos = (a64 * b64).sum(1) / (a64.norm(dim=1) * b64.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]  # clamp: rounding of |cos| just above 1
    sin = torch.sin(theta)
    linear = sin < 1e-8  # (anti)parallel noises: fall back to the straight line
    wa = torch.where(linear, torch.full_like(sin, 1 - weight), torch.sin((1 - weight) * theta) / sin)
    wb = torch.where(linear, torch.full_like(sin, weight), torch.sin(weight * theta) / sin)
    return (wa * a64 + wb * b64).reshape(a.shape).to(a.dtype)


def interpolate(model, noise_a: torch.Tensor, noise_b: torch.Tensor, weight: float, n_steps: int = 4,
                schedule=None, boundaries: str = "t", **cond) -> torch.Tensor:
    """Samples from slerp(noise_a, noise_b, weight): a path between two samples through the noise space."""
    check_batch("noise_a", noise_a)
    check_like("noise_b", noise_b, "noise_a", noise_a)
    return sample(model, n_steps, schedule=schedule, noise=slerp(noise_a, noise_b, weight), boundaries=boundaries,
                  **cond)
