"""Consistency models of Song et al. 2023 in their own EDM/VE form: the baseline MCM is compared against
(math.md §6). Data x, noise level sigma, x_sigma = x + sigma eps; f(x_sigma, sigma) -> x with
f(x, sigma_min) = x by construction (c_skip = 1, c_out = 0 there)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

from mcm_fast._checks import MAX_STEPS, batch_view, check_float_tensor, check_generator, check_int, check_real
from mcm_fast.schedules import Schedule

CM_KINDS = ("cd", "ct")
CM_SOLVERS = ("euler", "heun")
CM_DISTANCES = ("l2", "l2_squared", "pseudo_huber")


@dataclass(frozen=True)
class KarrasGrid:
    """sigma_i = (sigma_min^(1/rho) + (i - 1) / (N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 1..N."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max < math.inf:
            raise ValueError(f"sigma_min: expected 0 < sigma_min < sigma_max < inf, got {self.sigma_min}, "
                             f"{self.sigma_max}")
        if not 0 < self.rho < math.inf:
            raise ValueError(f"rho: expected a finite number > 0, got {self.rho!r}")

    def sigmas(self, n: int) -> torch.Tensor:
        """The N = n noise levels, ascending, float64."""
        check_int("n", n, 2, MAX_STEPS)
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + ramp * (hi - lo)) ** self.rho


def cm_steps(k: int, total: int, s0: int = 2, s1: int = 150) -> int:
    """N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, the discretization schedule of CT."""
    check_int("k", k, 0)
    check_int("total", total, 1)
    check_int("s0", s0, 1)
    check_int("s1", s1, s0)
    return math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def cm_ema_decay(k: int, total: int, s0: int = 2, s1: int = 150, mu0: float = 0.95) -> float:
    """mu(k) = exp(s0 log mu0 / N(k)), the EMA decay of the target network in CT."""
    if check_real("mu0", mu0, 0, 1) == 0:
        raise ValueError("mu0: expected a number in (0, 1], got 0")
    return math.exp(s0 * math.log(mu0) / cm_steps(k, total, s0, s1))


class EDMConsistency(torch.nn.Module):
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) net(c_in(sigma) x, c_noise(sigma), **cond) (Song et al. 2023):
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2), c_out = (sigma - sigma_min) sigma_data /
    sqrt(sigma^2 + sigma_data^2), c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = log(sigma) / 4."""

    def __init__(self, net, sigma_min: float = 0.002, sigma_data: float = 0.5):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net: expected a callable net(x, c_noise, **cond), got {type(net).__name__}")
        if not (0 < sigma_min < math.inf and 0 < sigma_data < math.inf):
            raise ValueError(f"sigma_min: expected positive sigma_min and sigma_data, got {sigma_min}, {sigma_data}")
        self.net, self.sigma_min, self.sigma_data = net, float(sigma_min), float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        check_float_tensor("x", x)
        sigma = batch_view(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0]), x)
        sd, sm = self.sigma_data, self.sigma_min
        c_skip = sd**2 / ((sigma - sm) ** 2 + sd**2)
        c_out = (sigma - sm) * sd / torch.sqrt(sigma**2 + sd**2)
        c_in = 1 / torch.sqrt(sigma**2 + sd**2)
        out = self.net((c_in * x).to(x.dtype), (torch.log(sigma.flatten()) / 4).to(x.dtype), **cond)
        return (c_skip * x + c_out * out).to(x.dtype)


class VEDenoiser:
    """A VP model(z_t, t) -> x_hat seen as an EDM denoiser D(x_sigma, sigma): x_sigma = z_t / alpha_t and
    sigma = sigma_t / alpha_t = exp(-lambda / 2), so t = schedule.t_of_logsnr(-2 log sigma)."""

    def __init__(self, model, schedule: Schedule):
        if not callable(model):
            raise TypeError(f"model: expected a callable model(z_t, t, **cond) -> x_hat, got {type(model).__name__}")
        self.model, self.schedule = model, schedule

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        logsnr = -2 * torch.log(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0]))
        alpha = batch_view(torch.sigmoid(logsnr).sqrt(), x)
        return self.model((alpha * x).to(x.dtype), self.schedule.t_of_logsnr(logsnr), **cond)


class ConsistencyLoss:
    """Consistency distillation (kind "cd", a teacher D(x, sigma) and its Euler or Heun step) or training
    (kind "ct", the same noise at both levels) of Song et al. 2023, on the Karras grid.

    steps: a fixed N (CD), or None for the CT schedule N(k) of cm_steps(k, total_steps, s0, s1).
    Call loss(online, target, x, step=k, teacher=...) with target the EMA model (decay cm_ema_decay for CT).
    """

    def __init__(self, kind: str = "cd", grid: KarrasGrid = KarrasGrid(), solver: str = "heun", distance: str = "l2",
                 steps: int | None = 18, total_steps: int = 100_000, s0: int = 2, s1: int = 150,
                 huber_c: float = 0.00054):
        for name, value, allowed in (("kind", kind, CM_KINDS), ("solver", solver, CM_SOLVERS),
                                     ("distance", distance, CM_DISTANCES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        if steps is not None:
            check_int("steps", steps, 2, MAX_STEPS)
        check_int("total_steps", total_steps, 1)
        if isinstance(huber_c, bool) or not (isinstance(huber_c, Real) and 0 < huber_c < math.inf):
            raise ValueError(f"huber_c: expected a finite number > 0, got {huber_c!r}")
        self.kind, self.grid, self.solver, self.distance = kind, grid, solver, distance
        self.steps, self.total_steps, self.s0, self.s1, self.huber_c = steps, total_steps, s0, s1, float(huber_c)

    def n_steps(self, step: int) -> int:
        return self.steps if self.steps is not None else cm_steps(step, self.total_steps, self.s0, self.s1)

    def __call__(self, online, target, x: torch.Tensor, step: int = 0, teacher=None, generator=None,
                 **cond) -> torch.Tensor:
        check_float_tensor("x", x)
        if (self.kind == "cd") != (teacher is not None):
            raise ValueError(f"teacher: expected a teacher D(x, sigma) exactly for kind='cd', got kind={self.kind!r}")
        sigmas = self.grid.sigmas(self.n_steps(step)).to(x.device)
        n = torch.randint(0, len(sigmas) - 1, (x.shape[0],), generator=generator, device=x.device)
        sigma_n, sigma_next = sigmas[n], sigmas[n + 1]
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_next = (x + batch_view(sigma_next, x) * noise).to(x.dtype)  # the networks see the data's dtype
        with torch.no_grad():
            if self.kind == "ct":
                x_n = x + batch_view(sigma_n, x) * noise
            else:
                x_n = self._teacher_step(teacher, x_next, sigma_next, sigma_n, cond)
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                f_target = target(x_n.to(x.dtype), sigma_n, **cond)
        diff = (online(x_next.to(x.dtype), sigma_next, **cond).float() - f_target.float()).flatten(1)
        dist_sq = diff.square().sum(1)
        if self.distance == "l2_squared":
            return dist_sq.mean()
        if self.distance == "l2":
            return dist_sq.sqrt().mean()
        c_sq = self.huber_c**2 * diff.shape[1]  # c = huber_c sqrt(d) (Song & Dhariwal 2023: 0.00054 sqrt(d))
        return (torch.sqrt(dist_sq + c_sq) - math.sqrt(c_sq)).mean()

    def _teacher_step(self, teacher, x, sigma, sigma_next, cond):
        """One Euler or Heun step of dx/dsigma = (x - D(x, sigma)) / sigma from sigma to sigma_next."""
        h = batch_view(sigma_next - sigma, x)
        slope = (x - teacher(x, sigma, **cond)) / batch_view(sigma, x)
        x_euler = x + h * slope
        if self.solver == "euler":
            return x_euler
        slope_next = (x_euler - teacher(x_euler.to(x.dtype), sigma_next, **cond)) / batch_view(sigma_next, x)
        return x + h * (slope + slope_next) / 2


@torch.no_grad()
def cm_sample(model, sigmas, noise: torch.Tensor, sigma_min: float = 0.002, generator=None, **cond) -> torch.Tensor:
    """Multistep consistency sampling of Song et al. (Algorithm 1): f at sigmas[0] (the largest) from
    sigmas[0] * noise, then re-noise to each next sigma with fresh noise; len(sigmas) model calls."""
    check_float_tensor("noise", noise)
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.tolist()
    numbers = isinstance(sigmas, (list, tuple)) and all(isinstance(s, Real) and not isinstance(s, bool) for s in sigmas)
    if not numbers:
        raise TypeError(f"sigmas: expected a list of noise levels, got {sigmas!r:.60}")
    check_generator("generator", generator)
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(a <= b for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] < sigma_min:
        raise ValueError(f"sigmas: expected strictly decreasing noise levels >= sigma_min={sigma_min}, got {sigmas}")
    x = model(sigmas[0] * noise, sigmas[0], **cond)
    for sigma in sigmas[1:]:
        fresh = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
        x = model(x + math.sqrt(sigma**2 - sigma_min**2) * fresh, sigma, **cond)
    return x
