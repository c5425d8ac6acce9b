"""aDDIM's x_var, the per-dimension variance of x around x_hat (math.md §3): "analytic", a number, or a table
measured on data (XVarTable)."""
from __future__ import annotations

import torch

from mcm_fast._checks import MAX_STEPS, check_batch, check_float_tensor, check_generator, check_int
from mcm_fast.schedules import Schedule
from mcm_fast.solvers import analytic_x_var


class XVarTable:
    """A per-t table of aDDIM's x_var = E ||x_hat(z_t, t) - x||^2 / d, measured on data, interpolated in t."""

    def __init__(self, t: torch.Tensor, x_var: torch.Tensor):
        check_float_tensor("t", t)
        check_float_tensor("x_var", x_var)
        if t.dim() != 1 or t.shape != x_var.shape or t.numel() < 2:
            raise ValueError(f"t: expected matching 1-D tensors of at least 2 points, got {tuple(t.shape)} and "
                             f"{tuple(x_var.shape)}")
        if not bool((t[1:] > t[:-1]).all()):
            raise ValueError("t: expected strictly increasing times")
        if not bool((x_var >= 0).all() & torch.isfinite(x_var).all()):
            raise ValueError("x_var: expected finite values >= 0")
        self.t, self.x_var = t.double().cpu(), x_var.double().cpu()

    @classmethod
    @torch.no_grad()
    def measure(cls, model, x: torch.Tensor, schedule: Schedule, points: int = 33, generator=None, **cond):
        """Measures the table on a batch of data x at `points` times spread evenly over [0, 1]."""
        check_int("points", points, 2, MAX_STEPS)
        check_batch("x", x, min_dim=2)
        check_generator("generator", generator)
        t = torch.linspace(0, 1, points, dtype=torch.float64)
        values = []
        for tk in t.tolist():
            alpha, sigma = schedule.alpha_sigma(tk)
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            z = (alpha * x + sigma * eps).to(x.dtype)
            t_vec = torch.full((x.shape[0],), tk, dtype=torch.float64, device=x.device)
            err = (model(z, t_vec, **cond).double() - x.double()).flatten(1).square().mean(1)
            values.append(err.mean())
        return cls(t, torch.stack(values).cpu())

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """x_var at times t (a tensor), linear between the table's points."""
        check_float_tensor("t", t, min_dim=0)
        pos = t.double().cpu()
        idx = torch.searchsorted(self.t, pos).clamp(1, len(self.t) - 1)
        lo, hi = self.t[idx - 1], self.t[idx]
        w = (pos - lo) / (hi - lo)
        return ((1 - w) * self.x_var[idx - 1] + w * self.x_var[idx]).to(t.device)


def x_var_at(x_var, t: torch.Tensor, schedule) -> torch.Tensor:
    """aDDIM's x_var at times t ([B]) from "analytic", a float or an XVarTable."""
    if isinstance(x_var, XVarTable):
        return x_var(t)
    if x_var == "analytic":
        return analytic_x_var(schedule.logsnr(t))
    return torch.full_like(t, float(x_var))
