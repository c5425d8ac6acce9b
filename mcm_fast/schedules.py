"""logSNR schedules (math.md §1): the cosine of simple diffusion and the schedules of teachers trained elsewhere.

Every schedule maps the package's time t in [0, 1] to the logSNR lambda (falling from lambda(0) to lambda(1))
and back; everything MCM computes is a function of lambda, so the samplers and kernels serve every schedule
alike. A schedule whose own process is not variance preserving (rectified flow, EDM's sigma) also says how its
z = a x + b eps scales the VP z_t and which time its networks see (Denoiser's time_input="native").
alpha and sigma always come from the logSNR through sigmoid, never as sqrt(1 - alpha^2), so both stay
accurate at either end of [0, 1]. Python floats compute in float64; tensors in float32 or float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import torch

from mcm_fast._checks import MAX_STEPS, check_int, check_range

SPACINGS = ("t", "logsnr")  # segment edges of Algorithms 1 and 2
GRIDS = (*SPACINGS, "edm")  # time grids of the teacher samplers
EDM_RHO = 7.0  # the rho of EDM's time grid (Karras et al. 2022)


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)) (math.md §1)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def as_time(t, name: str = "t") -> torch.Tensor:
    """t as a tensor in [0, 1]: a Python float becomes float64, float16/bfloat16 become float32."""
    if isinstance(t, bool) or not isinstance(t, (Real, torch.Tensor)):
        raise TypeError(f"{name}: expected a float or a tensor of times in [0, 1], got {type(t).__name__}")
    if isinstance(t, Real):
        t = torch.tensor(float(t), dtype=torch.float64)
    elif not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    check_range(name, t, 0.0, 1.0)
    return t


def _positive_numbers(name: str, value, count: int) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected a tuple of {count} positive numbers, got {type(value).__name__}")
    if len(value) != count:
        raise ValueError(f"{name}: expected a tuple of {count} positive numbers, got {value!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name}: expected numbers, got {value!r}")
    if not all(math.isfinite(v) and v > 0 for v in value):
        raise ValueError(f"{name}: expected finite positive numbers, got {value!r}")
    return tuple(value)


def _check_logsnr_range(schedule) -> None:
    """logsnr_min < logsnr_max, both finite numbers (the clip of the cosine and flow schedules)."""
    for name in ("logsnr_min", "logsnr_max"):
        value = getattr(schedule, name)
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if not schedule.logsnr_min < schedule.logsnr_max:
        raise ValueError(f"logsnr_min: expected less than logsnr_max={schedule.logsnr_max}, got {schedule.logsnr_min}")


class Schedule:
    """A noise schedule: lambda(t), falling in t on [0, 1], its inverse, and the schedule's own process.

    Subclasses define logsnr_unchecked; they may override t_of_logsnr_unchecked (bisection here),
    native_alpha_sigma (the a, b of their own z = a x + b eps; the VP alpha, sigma here) and native_time (the
    time their networks see; t here).
    """

    variance_preserving = True  # the schedule's own z is the VP z_t (a = alpha, b = sigma)

    def logsnr(self, t) -> torch.Tensor:
        """lambda(t) for t a float or a tensor in [0, 1] (math.md §1)."""
        return self.logsnr_unchecked(as_time(t))

    def logsnr_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) for a float32/float64 tensor t the caller has already checked to lie in [0, 1]."""
        raise NotImplementedError

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) for t a float or a tensor in [0, 1]."""
        return alpha_sigma(self.logsnr(t))

    def t_of_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        """The inverse of logsnr: t in [0, 1] with lambda(t) = logsnr.

        logsnr must lie in [lambda(1), lambda(0)] (a ValueError otherwise).
        """
        check_range("logsnr", logsnr, self.logsnr(1.0).item(), self.logsnr(0.0).item())
        return self.t_of_logsnr_unchecked(logsnr)

    def t_of_logsnr_unchecked(self, logsnr: torch.Tensor) -> torch.Tensor:
        """t with lambda(t) = logsnr by bisection, for schedules without a closed-form inverse."""
        left, right = torch.zeros_like(logsnr), torch.ones_like(logsnr)
        for _ in range(60):  # lambda falls with t: 60 halvings reach float64 resolution
            mid = (left + right) / 2
            above = self.logsnr_unchecked(mid) > logsnr
            left, right = torch.where(above, mid, left), torch.where(above, right, mid)
        return (left + right) / 2

    def native_alpha_sigma(self, logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) of the schedule's own z = a x + b eps at this logSNR: a / b = alpha / sigma, z = (a / alpha) z_t."""
        return alpha_sigma(logsnr)

    def native_time(self, t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """The time the schedule's own networks see at t (and logsnr = lambda(t))."""
        return t

    def segment_edges(self, n: int, spacing: str = "t") -> torch.Tensor:
        """The n + 1 boundaries 0 = t_0 < ... < t_n = 1 (float64) of n segments: uniform in t (exactly k / n),
        uniform in logSNR (between lambda(0) and lambda(1)), or EDM's grid, uniform in sigma^(1 / rho) for
        sigma = exp(-lambda / 2) and rho = 7 (Karras et al. 2022, eq. 5)."""
        check_int("n", n, 1, MAX_STEPS)
        if spacing not in GRIDS:
            raise ValueError(f"spacing: expected one of {GRIDS}, got {spacing!r}")
        if spacing == "t":
            return torch.arange(n + 1, dtype=torch.float64) / n
        hi, lo = self.logsnr(0.0).item(), self.logsnr(1.0).item()
        if spacing == "logsnr":
            lam = torch.linspace(hi, lo, n + 1, dtype=torch.float64)
        else:  # sigma^(1 / rho) = exp(-lambda / (2 rho)) uniform from sigma_min to sigma_max
            root = torch.linspace(math.exp(-hi / (2 * EDM_RHO)), math.exp(-lo / (2 * EDM_RHO)), n + 1,
                                  dtype=torch.float64)
            lam = (-2 * EDM_RHO * torch.log(root)).clamp(lo, hi)  # clamp: rounding at the ends
        edges = self.t_of_logsnr(lam)
        edges[0], edges[-1] = 0.0, 1.0  # exact ends, whatever the inverse's rounding
        return edges

    def falling_edges(self, n: int, spacing: str = "t") -> list[float]:
        """The segment edges from 1 down to 0 as floats: the times a sampler of n steps visits."""
        return self.segment_edges(n, spacing).flip(0).tolist()


@dataclass(frozen=True)
class CosineSchedule(Schedule):
    """Cosine logSNR schedule of simple diffusion, clipped to [logsnr_min, logsnr_max], optionally shifted.

    lambda(t) = -2 log tan(pi u / 2) with u = t_min + t (t_max - t_min), so lambda(0) = logsnr_max and
    lambda(1) = logsnr_min exactly and nothing divides by zero. shift=(r, res) adds 2 log(r / res);
    interpolate=(r_lo, r_hi, res) blends t * lambda_shift(r_lo) + (1 - t) * lambda_shift(r_hi).
    """

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift: tuple | None = None
    interpolate: tuple | None = None

    def __post_init__(self):
        _check_logsnr_range(self)
        if self.shift is not None and self.interpolate is not None:
            raise ValueError("shift: expected None when interpolate is given (interpolate shifts both ends itself)")
        if self.shift is not None:
            object.__setattr__(self, "shift", _positive_numbers("shift", self.shift, 2))
        if self.interpolate is not None:
            object.__setattr__(self, "interpolate", _positive_numbers("interpolate", self.interpolate, 3))

    @property
    def t_min(self) -> float:
        return math.atan(math.exp(-self.logsnr_max / 2)) * 2 / math.pi

    @property
    def t_max(self) -> float:
        return math.atan(math.exp(-self.logsnr_min / 2)) * 2 / math.pi

    def _cosine(self, t: torch.Tensor) -> torch.Tensor:
        u = self.t_min + t * (self.t_max - self.t_min)
        return -2 * torch.log(torch.tan(math.pi * u / 2))

    def logsnr_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        lam = self._cosine(t)
        if self.shift is not None:
            r, res = self.shift
            return lam + 2 * math.log(r / res)
        if self.interpolate is not None:
            r_lo, r_hi, res = self.interpolate
            return t * (lam + 2 * math.log(r_lo / res)) + (1 - t) * (lam + 2 * math.log(r_hi / res))
        return lam

    def t_of_logsnr_unchecked(self, logsnr: torch.Tensor) -> torch.Tensor:
        """Closed form; bisection when interpolated."""
        if self.interpolate is not None:
            return super().t_of_logsnr_unchecked(logsnr)
        shift = 0.0 if self.shift is None else 2 * math.log(self.shift[0] / self.shift[1])
        u = torch.atan(torch.exp(-(logsnr - shift) / 2)) * 2 / math.pi
        return ((u - self.t_min) / (self.t_max - self.t_min)).clamp(0, 1)  # clamp: rounding at the ends


@dataclass(frozen=True)
class FlowSchedule(Schedule):
    """The rectified-flow path z = (1 - u) x + u eps of flow matching (SD3, Flux), lambda = 2 log((1 - u) / u).

    u = shift v / (1 + (shift - 1) v) for v = v_min + t (v_max - v_min), over the u whose logSNR lies in
    [logsnr_min, logsnr_max], so that t = 0 and t = 1 stay finite. shift > 1 spends more of t at high noise:
    SD3's FlowMatchEulerDiscreteScheduler shift (3.0), so that uniform steps in t are its timestep spacing.
    Networks see u time_scale (time_input="native"): u for the package's own flow networks, 1000 u (diffusers'
    num_train_timesteps) for a diffusers flow transformer.
    """

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift: float = 1.0
    time_scale: float = 1.0
    variance_preserving = False

    def __post_init__(self):
        _check_logsnr_range(self)
        for name in ("shift", "time_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")

    @property
    def u_min(self) -> float:
        return 1 / (1 + math.exp(self.logsnr_max / 2))  # sigmoid(-lambda / 2)

    @property
    def u_max(self) -> float:
        return 1 / (1 + math.exp(self.logsnr_min / 2))

    def _unshift(self, u):
        """v with u = shift v / (1 + (shift - 1) v)."""
        return u / (self.shift - (self.shift - 1) * u)

    def u(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level u at t."""
        v_min, v_max = self._unshift(self.u_min), self._unshift(self.u_max)
        v = v_min + t * (v_max - v_min)
        return v if self.shift == 1 else self.shift * v / (1 + (self.shift - 1) * v)

    def logsnr_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        u = self.u(t)
        return 2 * (torch.log1p(-u) - torch.log(u))

    def t_of_logsnr_unchecked(self, logsnr: torch.Tensor) -> torch.Tensor:
        v_min, v_max = self._unshift(self.u_min), self._unshift(self.u_max)
        v = self._unshift(torch.sigmoid(-logsnr / 2))
        return ((v - v_min) / (v_max - v_min)).clamp(0, 1)  # clamp: rounding at the ends

    def native_alpha_sigma(self, logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - u, u) = (sigmoid(lambda / 2), sigmoid(-lambda / 2)): alpha and sigma over alpha + sigma."""
        return torch.sigmoid(logsnr / 2), torch.sigmoid(-logsnr / 2)

    def native_time(self, t: torch.Tensor, logsnr) -> torch.Tensor:
        """u time_scale: the flow's own time, as its networks take it."""
        u = self.u(t)
        return u if self.time_scale == 1 else u * self.time_scale


@dataclass(frozen=True)
class EDMSchedule(Schedule):
    """EDM's variance-exploding z = x + sigma eps (Karras et al. 2022): sigma = exp(-lambda / 2).

    t runs over sigma^(1 / rho) uniformly from sigma_min to sigma_max, so that uniform steps in t are EDM's
    time grid; networks see sigma (time_input="native"), and D(z, sigma) is prediction="x".
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = EDM_RHO
    variance_preserving = False

    def __post_init__(self):
        for name in ("sigma_min", "sigma_max", "rho"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min: expected less than sigma_max={self.sigma_max}, got {self.sigma_min}")

    def _roots(self) -> tuple[float, float]:
        return self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

    def logsnr_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self._roots()
        return -2 * self.rho * torch.log(lo + t * (hi - lo))  # -2 log sigma

    def t_of_logsnr_unchecked(self, logsnr: torch.Tensor) -> torch.Tensor:
        lo, hi = self._roots()
        return ((torch.exp(-logsnr / (2 * self.rho)) - lo) / (hi - lo)).clamp(0, 1)  # clamp: rounding at the ends

    def native_alpha_sigma(self, logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, sigma): z = z_t / alpha."""
        return torch.ones_like(logsnr), torch.exp(-logsnr / 2)

    def native_time(self, t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """sigma."""
        return torch.exp(-logsnr / 2)


@dataclass(frozen=True, repr=False)
class DiscreteSchedule(Schedule):
    """The discrete variance-preserving schedule of DDPM/DDIM (diffusers): alpha_bar = alphas_cumprod[tau] at
    timesteps tau = 0..T-1, any beta schedule, with t = tau / (T - 1).

    lambda = log(alpha_bar / (1 - alpha_bar)) at each timestep, linear in tau between them; networks see the
    (fractional) timestep tau (time_input="native").
    """

    alphas_cumprod: tuple
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        values = self.alphas_cumprod
        if isinstance(values, torch.Tensor):
            values = values.detach().double().cpu().flatten().tolist() if values.dim() == 1 else values
        if not isinstance(values, (tuple, list)) or len(values) < 2:
            raise ValueError(f"alphas_cumprod: expected a 1-D sequence of at least 2 values, got {values!r:.80}")
        if not all(isinstance(v, Real) and not isinstance(v, bool) and 0 < v < 1 for v in values):
            raise ValueError(f"alphas_cumprod: expected values in (0, 1), got {values!r:.80}")
        values = tuple(float(v) for v in values)
        if not all(a > b for a, b in zip(values, values[1:])):
            raise ValueError("alphas_cumprod: expected strictly decreasing values (every beta > 0)")
        object.__setattr__(self, "alphas_cumprod", values)

    def __repr__(self) -> str:
        first, last = self.alphas_cumprod[0], self.alphas_cumprod[-1]
        return f"DiscreteSchedule(T={len(self.alphas_cumprod)}, alphas_cumprod={first:.6g}..{last:.6g})"

    def logsnrs(self, like: torch.Tensor) -> torch.Tensor:
        """The [T] logSNRs of the timesteps, on like's device in like's dtype (cached per device and dtype)."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            alpha_bar = torch.tensor(self.alphas_cumprod, dtype=torch.float64)
            self._tables[key] = (torch.log(alpha_bar) - torch.log1p(-alpha_bar)).to(like.device, like.dtype)
        return self._tables[key]

    def logsnr_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        table = self.logsnrs(t)
        tau = t * (len(table) - 1)
        i = tau.floor().clamp(0, len(table) - 2)
        lo = table[i.long()]
        return lo + (tau - i) * (table[i.long() + 1] - lo)

    def t_of_logsnr_unchecked(self, logsnr: torch.Tensor) -> torch.Tensor:
        table = self.logsnrs(logsnr)
        i = torch.searchsorted(-table, -logsnr.contiguous()).clamp(1, len(table) - 1)  # table[i - 1] >= logsnr
        hi, lo = table[i - 1], table[i]
        return (((i - 1) + (hi - logsnr) / (hi - lo)) / (len(table) - 1)).clamp(0, 1)

    def native_time(self, t: torch.Tensor, logsnr) -> torch.Tensor:
        """The timestep tau = t (T - 1)."""
        return t * (len(self.alphas_cumprod) - 1)
