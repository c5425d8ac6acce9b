"""The backends of ddim_step and addim_step: the reference formulas of mcm_fast.solvers, and as torch.library
ops the C++/CUDA ones of csrc/ddim.cpp and the Triton ones of kernels/ddim.py, each with one fake (shapes and
dtypes for torch.compile) and one autograd formula.

The op takes per-sample logSNRs ([B]) and x_var ([B]); its backward is the closed form of solvers.py in
plain PyTorch for every backend.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mcm_fast.ops.native import TRITON_ERROR, native_keys
from mcm_fast.ops.registry import register
from mcm_fast.solvers import addim_step_backward, addim_step_reference, ddim_step_backward, ddim_step_reference


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


AUTOGRAD = {"ddim_step": (_ddim_backward, _save_logsnrs), "addim_step": (_addim_backward, _save_inputs)}


def _define(op: str, impl, backends) -> None:
    """Gives impl (a torch.library op) the fake and autograd of op and registers it for each backend."""
    torch.library.register_fake(impl)(_fake_step)
    backward, setup = AUTOGRAD[op]
    torch.library.register_autograd(impl, backward, setup_context=setup)
    for backend in backends:
        register(op, backend, differentiable=True)(impl)


register("ddim_step", "reference", differentiable=True)(ddim_step_reference)
register("addim_step", "reference", differentiable=True)(addim_step_reference)
for _op in AUTOGRAD:
    if native_keys(_op):
        _define(_op, getattr(torch.ops.mcm_fast, f"{_op}_native").default, [b for b, _ in native_keys(_op)])

if TRITON_ERROR is None:
    from mcm_fast.kernels import ddim as kernels

    @torch.library.triton_op("mcm_fast::ddim_step_triton", mutates_args=())
    def ddim_step_triton(x_hat: Tensor, z_t: Tensor, logsnr_t: Tensor, logsnr_s: Tensor) -> Tensor:
        return kernels.ddim_step(x_hat, z_t, logsnr_t, logsnr_s)

    @torch.library.triton_op("mcm_fast::addim_step_triton", mutates_args=())
    def addim_step_triton(x_hat: Tensor, z_t: Tensor, logsnr_t: Tensor, logsnr_s: Tensor, x_var: Tensor) -> Tensor:
        return kernels.ddim_step(x_hat, z_t, logsnr_t, logsnr_s, x_var)

    _define("ddim_step", ddim_step_triton, ["triton"])
    _define("addim_step", addim_step_triton, ["triton"])
