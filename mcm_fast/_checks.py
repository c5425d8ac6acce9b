"""Argument checks shared by the public functions (each error names the argument and what was expected),
and the per-sample broadcasting they prepare for."""
from __future__ import annotations

import contextlib
import contextvars
import math
from numbers import Integral, Real

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_STEPS = 100_000  # network calls of one sampling run, teacher steps of one segment: more is a mistake
MAX_ELEMENTS = 2**31  # elements of one batch drawn from noise (8 GiB in float32)



def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype our formulas compute in: float64 for float64 data, else float32 (float16 and bfloat16 too)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_INPUTS_CHECKED = contextvars.ContextVar("inputs_checked", default=False)


@contextlib.contextmanager
def inputs_checked():
    """Within it value checks read nothing back from the device: an inner loop (a sampler's steps, Algorithm 1,
    a training step) runs in it after its public call has checked its inputs once, so that the model calls
    and steps in it cost no host sync."""
    token = _INPUTS_CHECKED.set(True)
    try:
        yield
    finally:
        _INPUTS_CHECKED.reset(token)


def can_read_values(x: torch.Tensor) -> bool:
    """Whether checking x's values is allowed: not while compiling or capturing a CUDA graph (a host sync), nor
    inside inputs_checked()."""
    if torch.compiler.is_compiling() or _INPUTS_CHECKED.get():
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def check_float_tensor(name: str, x, min_dim: int = 1) -> torch.Tensor:
    """x must be a floating-point tensor with at least min_dim dims."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name}: expected a [B, ...] tensor with at least {min_dim} dim(s), got shape "
                         f"{tuple(x.shape)}")
    return x


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """value must be an int (not a bool; TypeError) in [lo, hi] (ValueError); a bound of None is open."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r:.40}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        expected = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None \
            else f"<= {hi}"
        raise ValueError(f"{name}: expected an integer {expected}, got {value!r}")
    return int(value)


def check_shape(name: str, shape) -> tuple[int, ...]:
    """shape must be a non-empty tuple, list or torch.Size of positive ints, at most MAX_ELEMENTS in all."""
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape:
        raise TypeError(f"{name}: expected a tuple of sizes (B, ...), got {shape!r:.60}")
    sizes = tuple(check_int(f"{name}[{i}]", n, 1) for i, n in enumerate(shape))
    if math.prod(sizes) > MAX_ELEMENTS:
        raise ValueError(f"{name}: expected at most {MAX_ELEMENTS} elements, got {sizes} ({math.prod(sizes)})")
    return sizes


def check_generator(name: str, generator) -> None:
    """generator must be None or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: expected None or a torch.Generator, got {type(generator).__name__}")


def check_real(name: str, value, lo: float, hi: float) -> float:
    """value must be a real number (not a bool; TypeError) in [lo, hi] (ValueError; NaN never is)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r:.40}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}: expected a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def check_batch(name: str, x, min_dim: int = 1) -> torch.Tensor:
    """x must be a floating-point [B, ...] tensor (at least min_dim dims) with B >= 1: a mean over an empty
    batch would be NaN."""
    check_float_tensor(name, x, min_dim)
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected a batch of at least one example, got shape {tuple(x.shape)}")
    return x


def check_like(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """x must be a tensor with ref's shape, dtype and device."""
    check_float_tensor(name, x, min_dim=0)
    if x.shape != ref.shape:
        raise ValueError(f"{name}: expected shape {tuple(ref.shape)} like {ref_name}, got {tuple(x.shape)}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} like {ref_name}, got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} like {ref_name}, got {x.device}")
    return x


def per_sample(name: str, value, batch: int, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A float, 0-d or [B] tensor as a [B] tensor on device; a Python float becomes dtype (float64 by default).

    Tensors keep a float32/float64 dtype; float16/bfloat16 values are promoted to float32.
    """
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)):
        raise TypeError(f"{name}: expected a float, a 0-d tensor or a [{batch}] tensor, got {type(value).__name__}")
    if isinstance(value, Real):
        return torch.full((batch,), float(value), dtype=dtype, device=device)
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} like the data, got {value.device}")
    if value.dim() == 0:
        value = value.expand(batch)
    elif value.shape != (batch,):
        raise ValueError(f"{name}: expected a float, a 0-d tensor or shape [{batch}], got shape {tuple(value.shape)}")
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def check_range(name: str, value, lo: float, hi: float) -> None:
    """Every value must be finite and lie in [lo, hi]. Python numbers are always checked; tensors only where
    reading values would not break a compiled graph or a CUDA-graph capture. Other types are left to
    per_sample, which names what it expected."""
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point or not can_read_values(value) or value.numel() == 0:
            return
        bad = ~torch.isfinite(value) | (value < lo) | (value > hi)
        if bool(bad.any()):
            raise ValueError(f"{name}: expected finite values in [{lo}, {hi}], got {value[bad].flatten()[0].item()!r}")
    elif isinstance(value, Real) and not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name}: expected a finite value in [{lo}, {hi}], got {value!r}")


def check_order(s, t, s_vec: torch.Tensor, t_vec: torch.Tensor, strict: bool) -> None:
    """s < t (strict) or s <= t per sample: a step goes from noisier t to cleaner s.

    s, t are the arguments as given (Python numbers are checked even while compiling); s_vec, t_vec their [B] form.
    """
    need = "s < t" if strict else "s <= t"
    if isinstance(s, Real) and isinstance(t, Real):
        if (s >= t) if strict else (s > t):
            raise ValueError(f"s: expected {need}, got s={s!r} and t={t!r}")
        return
    if not can_read_values(t_vec):
        return
    bad = (s_vec >= t_vec) if strict else (s_vec > t_vec)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"s: expected {need} for every sample, got s={s_vec[i].item()!r} and t={t_vec[i].item()!r} "
                         f"at index {i}")


def batch_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [B] tensor viewed as [B, 1, ..., 1] to broadcast against like ([B, ...])."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def describe(value) -> str:
    """A tensor's dtype and shape, or another value's type, for error messages."""
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__
