"""logSNR schedules of the variance-preserving process (math.md §1).

alpha and sigma always come from the logSNR lambda through sigmoid, never as sqrt(1 - alpha^2), so both stay
accurate at either end of [0, 1]. Python floats compute in float64; tensors in float32 or float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

from mcm_fast._checks import MAX_STEPS, check_int, check_range

SPACINGS = ("t", "logsnr")


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


@dataclass(frozen=True)
class CosineSchedule:
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
        for name in ("logsnr_min", "logsnr_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min: expected less than logsnr_max={self.logsnr_max}, got {self.logsnr_min}")
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

    def logsnr(self, t) -> torch.Tensor:
        """lambda(t) for t a float or a tensor in [0, 1] (math.md §1)."""
        return self.logsnr_unchecked(as_time(t))

    def logsnr_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) for a float32/float64 tensor t the caller has already checked to lie in [0, 1]."""
        lam = self._cosine(t)
        if self.shift is not None:
            r, res = self.shift
            return lam + 2 * math.log(r / res)
        if self.interpolate is not None:
            r_lo, r_hi, res = self.interpolate
            return t * (lam + 2 * math.log(r_lo / res)) + (1 - t) * (lam + 2 * math.log(r_hi / res))
        return lam

    def t_of_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        """The inverse of logsnr: t in [0, 1] with lambda(t) = logsnr; closed form, bisection when interpolated.

        logsnr must lie in [lambda(1), lambda(0)] (a ValueError otherwise).
        """
        lo, hi = self.logsnr(1.0).item(), self.logsnr(0.0).item()
        check_range("logsnr", logsnr, lo, hi)
        if self.interpolate is None:
            shift = 0.0 if self.shift is None else 2 * math.log(self.shift[0] / self.shift[1])
            u = torch.atan(torch.exp(-(logsnr - shift) / 2)) * 2 / math.pi
            return ((u - self.t_min) / (self.t_max - self.t_min)).clamp(0, 1)  # clamp: rounding at the ends
        left, right = torch.zeros_like(logsnr), torch.ones_like(logsnr)
        for _ in range(60):  # lambda falls with t: 60 halvings reach float64 resolution
            mid = (left + right) / 2
            above = self.logsnr_unchecked(mid) > logsnr
            left, right = torch.where(above, mid, left), torch.where(above, right, mid)
        return (left + right) / 2

    def segment_edges(self, n: int, spacing: str = "t") -> torch.Tensor:
        """The n + 1 boundaries 0 = t_0 < ... < t_n = 1 (float64) of n segments, uniform in t (exactly k / n)
        or uniform in logSNR (between lambda(0) and lambda(1))."""
        check_int("n", n, 1, MAX_STEPS)
        if spacing not in SPACINGS:
            raise ValueError(f"spacing: expected one of {SPACINGS}, got {spacing!r}")
        if spacing == "t":
            return torch.arange(n + 1, dtype=torch.float64) / n
        lam = torch.linspace(self.logsnr(0.0).item(), self.logsnr(1.0).item(), n + 1, dtype=torch.float64)
        edges = self.t_of_logsnr(lam)
        edges[0], edges[-1] = 0.0, 1.0  # exact ends, whatever the inverse's rounding
        return edges

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) for t a float or a tensor in [0, 1]."""
        return alpha_sigma(self.logsnr(t))
