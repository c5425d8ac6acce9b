"""The compiled extension mcm_fast._C (csrc/): its ops join the registry as backends "cpu" and "cuda".

The C++ ops torch.ops.mcm_fast.{ddim,addim}_step_native take per-sample logSNRs ([B]) and x_var ([B]);
their fake implementations here let torch.compile and torch.library.opcheck trace them. Without the
extension the package still works on the reference backend; NATIVE_ERROR says why it is missing.
"""
from __future__ import annotations

import torch

from mcm_fast.ops.registry import register

try:
    from mcm_fast import _C  # noqa: F401  (importing registers the ops)
except ImportError as error:
    NATIVE_ERROR: str | None = f"{type(error).__name__}: {error}"
else:
    NATIVE_ERROR = None


def _fake_step(x_hat, z_t, logsnr_t, logsnr_s, x_var=None):
    torch._check(z_t.shape == x_hat.shape, lambda: f"z_t: expected shape {tuple(x_hat.shape)} like x_hat")
    torch._check(z_t.dtype == x_hat.dtype, lambda: f"z_t: expected dtype {x_hat.dtype} like x_hat")
    for name, v in (("logsnr_t", logsnr_t), ("logsnr_s", logsnr_s), ("x_var", x_var)):
        if v is not None:
            torch._check(v.shape == (x_hat.shape[0],), lambda: f"{name}: expected shape [{x_hat.shape[0]}]")
    return torch.empty_like(x_hat, memory_format=torch.contiguous_format)


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mcm_fast::{op}", key)


if NATIVE_ERROR is None:
    torch.library.register_fake("mcm_fast::ddim_step_native")(_fake_step)
    torch.library.register_fake("mcm_fast::addim_step_native")(_fake_step)
    for backend, key in (("cpu", "CPU"), ("cuda", "CUDA")):
        if _has_kernel("ddim_step_native", key):
            register("ddim_step", backend)(torch.ops.mcm_fast.ddim_step_native.default)
        if _has_kernel("addim_step_native", key):
            register("addim_step", backend)(torch.ops.mcm_fast.addim_step_native.default)
