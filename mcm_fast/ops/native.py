"""The compiled extension mcm_fast._C (csrc/): its ops join the registry as backends "cpu" and "cuda".

The C++ ops torch.ops.mcm_fast.{ddim,addim}_step_native take per-sample logSNRs ([B]) and x_var ([B]);
their fake implementations here let torch.compile and torch.library.opcheck trace them, and their
backward is the closed form of solvers.py (plain PyTorch until a fused backward lands). Without the
extension the package still works on the reference backend; NATIVE_ERROR says why it is missing.
"""
from __future__ import annotations

import torch

from mcm_fast.ops.registry import register
from mcm_fast.solvers import addim_step_backward, ddim_step_backward

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
            torch._check(v.shape == (x_hat.shape[0],), lambda name=name: f"{name}: expected shape [{x_hat.shape[0]}]")
    return torch.empty_like(x_hat, memory_format=torch.contiguous_format)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _save_logsnrs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[2:4])  # DDIM is linear: its backward needs only the coefficients


def _ddim_backward(ctx, grad):
    logsnr_t, logsnr_s = ctx.saved_tensors
    return *ddim_step_backward(grad, logsnr_t, logsnr_s), None, None


def _addim_backward(ctx, grad):
    x_hat, z_t, logsnr_t, logsnr_s, x_var = ctx.saved_tensors
    grad_x, grad_z, grad_var = addim_step_backward(grad, x_hat, z_t, logsnr_t, logsnr_s, x_var)
    return grad_x, grad_z, None, None, grad_var


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mcm_fast::{op}", key)


if NATIVE_ERROR is None:
    for op, backward, setup in (("ddim_step", _ddim_backward, _save_logsnrs), ("addim_step", _addim_backward, _save_inputs)):
        name = f"mcm_fast::{op}_native"
        torch.library.register_fake(name)(_fake_step)
        torch.library.register_autograd(name, backward, setup_context=setup)
        for backend, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            if _has_kernel(f"{op}_native", key):
                register(op, backend, differentiable=True)(getattr(torch.ops.mcm_fast, f"{op}_native").default)
