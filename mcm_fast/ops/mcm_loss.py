"""The MCM target and loss of Algorithm 1, steps 6-8 (math.md §4), as one op family: its public checked
functions (mcm_target, mcm_loss, mcm_target_loss, and the *_unchecked entries of Algorithm 1's loop) and its
backends (the reference formulas of mcm_fast.losses; as torch.library ops the C++/CUDA ones of
csrc/mcm_loss.cpp and the Triton ones of kernels/mcm_loss.py, each with one fake and one autograd formula).

A public function checks its arguments once, turns t, s and t_step into per-sample logSNRs, has the backend the
registry picks compute the target or the squared distances ||x_hat - x_target||^2 [B], and applies the
pseudo-Huber and weighting of mcm_fast.losses on those [B] numbers; Algorithm 1's loop, whose inputs are already
checked, calls target_unchecked and target_loss_unchecked on logSNRs: no check reads a tensor back.
A squared-distance op returns (||x_hat - x_target||^2 [B], diff): diff = x_hat - x_target in float32 (float64
for float64 data), written in the forward pass only when a gradient will be needed (save_diff), is what the
backward op scales per sample and rounds once to x_hat's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mcm_fast._checks import check_float_tensor, check_like, check_order, check_range, compute_dtype, per_sample
from mcm_fast.losses import (
    LOSSES,
    check_huber_eps,
    mcm_target_reference,
    robust_loss,
    squared_distance_reference,
    target_coefficients,
    target_squared_distance_reference,
)
from mcm_fast.ops.native import TRITON_ERROR, native_keys
from mcm_fast.ops.registry import dispatch, needs_grad, register
from mcm_fast.schedules import Schedule


def _check_like(name, x, ref):
    torch._check(x.shape == ref.shape, lambda: f"{name}: expected shape {tuple(ref.shape)}, got {tuple(x.shape)}")
    torch._check(x.dtype == ref.dtype, lambda: f"{name}: expected dtype {ref.dtype}, got {x.dtype}")


def _check_logsnrs(batch, *logsnrs):
    for name, v in zip(("logsnr_t", "logsnr_s", "logsnr_step"), logsnrs):
        torch._check(v.shape == (batch,), lambda name=name: f"{name}: expected shape [{batch}]")


def _fake_target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step):
    _check_like("z_s", z_s, x_ref)
    _check_like("z_t", z_t, x_ref)
    _check_logsnrs(x_ref.shape[0], logsnr_t, logsnr_s, logsnr_step)
    return torch.empty_like(x_ref, memory_format=torch.contiguous_format)


def _distance_outputs(x_hat, save_diff):
    compute = compute_dtype(x_hat)
    diff = x_hat.new_empty(x_hat.shape, dtype=compute) if save_diff else x_hat.new_empty(0)
    return x_hat.new_empty(x_hat.shape[0], dtype=compute), diff


def _fake_sqdist(x_hat, target, save_diff):
    _check_like("target", target, x_hat)
    return _distance_outputs(x_hat, save_diff)


def _fake_target_sqdist(x_hat, x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step, save_diff):
    _check_like("x_ref", x_ref, x_hat)
    _fake_target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step)
    return _distance_outputs(x_hat, save_diff)


def _fake_sqdist_backward(diff, grad_dist_sq, dtype):
    torch._check(grad_dist_sq.shape == (diff.shape[0],), lambda: f"grad_dist_sq: expected shape [{diff.shape[0]}]")
    return diff.new_empty(diff.shape, dtype=dtype)


def _save_logsnrs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[3:6])


def _target_backward(ctx, grad):
    """x_target is linear in (x_ref, z_s, z_t): each gradient is its per-sample coefficient times grad."""
    coefs = target_coefficients(*ctx.saved_tensors)  # [B, 3]
    compute = compute_dtype(grad)
    shape = (grad.shape[0],) + (1,) * (grad.dim() - 1)
    g = grad.to(compute)
    return *((coefs[:, i].to(compute).view(shape) * g).to(grad.dtype) for i in range(3)), None, None, None


def _save_diff(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.dtype = inputs[0].dtype


def _sqdist_autograd(backward_op):
    """Backward of a squared-distance op: dL/dx_hat from the saved diff; x_hat - target gives dL/dtarget =
    -dL/dx_hat."""

    def backward(ctx, grad_dist_sq, _grad_diff):
        grad_x = backward_op(ctx.saved_tensors[0], grad_dist_sq, ctx.dtype)
        grad_target = -grad_x if len(ctx.needs_input_grad) == 3 and ctx.needs_input_grad[1] else None
        return (grad_x, grad_target) + (None,) * (len(ctx.needs_input_grad) - 2)

    return backward


def _distance(op, n_grad_inputs: int):
    """The registry's entry: op's [B] distances, asking it to save diff when its first n inputs need a gradient."""

    def run(*inputs):
        return op(*inputs, needs_grad(*inputs[:n_grad_inputs]))[0]

    return run


def _define(target, sqdist, target_sqdist, sqdist_backward, backends) -> None:
    """Gives one backend's four ops their fakes and autograd and registers them for each backend."""
    torch.library.register_fake(target)(_fake_target)
    torch.library.register_autograd(target, _target_backward, setup_context=_save_logsnrs)
    torch.library.register_fake(sqdist)(_fake_sqdist)
    torch.library.register_fake(target_sqdist)(_fake_target_sqdist)
    torch.library.register_fake(sqdist_backward)(_fake_sqdist_backward)
    for op in (sqdist, target_sqdist):
        torch.library.register_autograd(op, _sqdist_autograd(sqdist_backward), setup_context=_save_diff)
    for backend in backends:
        register("mcm_target", backend, differentiable=True)(target)
        register("mcm_sqdist", backend, differentiable=True)(_distance(sqdist, 2))
        register("mcm_target_sqdist", backend, differentiable=True)(_distance(target_sqdist, 1))


register("mcm_target", "reference", differentiable=True)(mcm_target_reference)
register("mcm_sqdist", "reference", differentiable=True)(squared_distance_reference)
register("mcm_target_sqdist", "reference", differentiable=True)(target_squared_distance_reference)


NATIVE_OPS = ("mcm_target", "mcm_sqdist", "mcm_target_sqdist", "mcm_sqdist_backward")
if native_keys("mcm_target"):
    _define(*(getattr(torch.ops.mcm_fast, f"{op}_native").default for op in NATIVE_OPS),
            [backend for backend, _ in native_keys("mcm_target")])

if TRITON_ERROR is None:
    from mcm_fast.kernels import mcm_loss as kernels

    @torch.library.triton_op("mcm_fast::mcm_target_triton", mutates_args=())
    def mcm_target_triton(x_ref: Tensor, z_s: Tensor, z_t: Tensor, logsnr_t: Tensor, logsnr_s: Tensor,
                          logsnr_step: Tensor) -> Tensor:
        return kernels.mcm_target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step)

    @torch.library.triton_op("mcm_fast::mcm_sqdist_triton", mutates_args=())
    def mcm_sqdist_triton(x_hat: Tensor, target: Tensor, save_diff: bool) -> tuple[Tensor, Tensor]:
        return kernels.mcm_sqdist(x_hat, target, save_diff)

    @torch.library.triton_op("mcm_fast::mcm_target_sqdist_triton", mutates_args=())
    def mcm_target_sqdist_triton(x_hat: Tensor, x_ref: Tensor, z_s: Tensor, z_t: Tensor, logsnr_t: Tensor,
                                 logsnr_s: Tensor, logsnr_step: Tensor, save_diff: bool) -> tuple[Tensor, Tensor]:
        return kernels.mcm_sqdist(x_hat, x_ref, save_diff, z_s, z_t, (logsnr_t, logsnr_s, logsnr_step))

    @torch.library.triton_op("mcm_fast::mcm_sqdist_backward_triton", mutates_args=())
    def mcm_sqdist_backward_triton(diff: Tensor, grad_dist_sq: Tensor, dtype: torch.dtype) -> Tensor:
        return kernels.mcm_sqdist_backward(diff, grad_dist_sq, dtype)

    _define(mcm_target_triton, mcm_sqdist_triton, mcm_target_sqdist_triton, mcm_sqdist_backward_triton, ["triton"])


def _check_loss_options(loss, huber_eps) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    check_huber_eps(huber_eps)


def _weight(weight, x: torch.Tensor) -> torch.Tensor:
    """The per-sample weight [B]: a float or a [B] tensor (whose values are not read: that would sync every step)."""
    if not isinstance(weight, torch.Tensor):
        check_range("weight", weight, 0, float("inf"))
    return per_sample("weight", weight, x.shape[0], x.device)


def _weighted(dist_sq, weight, loss, huber_eps):
    """weight * rho(dist_sq) [B] in dist_sq's dtype."""
    return weight.to(dist_sq.dtype) * robust_loss(dist_sq, loss, float(huber_eps))  # float: an int may overflow


def _target_logsnrs(x_ref, z_s, z_t, t, s, t_step, schedule):
    """Checks t_step <= s <= t and t_step < t per sample; returns the three [B] logSNRs."""
    check_float_tensor("x_ref", x_ref)
    check_like("z_s", z_s, "x_ref", x_ref)
    check_like("z_t", z_t, "x_ref", x_ref)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
    batch, device = x_ref.shape[0], x_ref.device
    vecs = {name: per_sample(name, v, batch, device) for name, v in (("t", t), ("s", s), ("t_step", t_step))}
    for name, value in (("t", t), ("s", s), ("t_step", t_step)):
        check_range(name, vecs[name] if isinstance(value, torch.Tensor) else value, 0.0, 1.0)
    check_order(s, t, vecs["s"], vecs["t"], strict=False)
    try:
        check_order(t_step, s, vecs["t_step"], vecs["s"], strict=False)
        check_order(t_step, t, vecs["t_step"], vecs["t"], strict=True)
    except ValueError as error:
        raise ValueError(f"t_step: expected t_step <= s and t_step < t ({error})") from None
    return tuple(schedule.logsnr_unchecked(vecs[name]) for name in ("t", "s", "t_step"))


def target_unchecked(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step, backend=None):
    """mcm_target on per-sample logSNRs [B], for callers that have checked their inputs."""
    impl = dispatch("mcm_target", x_ref.device, needs_grad(x_ref, z_s, z_t), backend)
    return impl(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step)


def target_loss_unchecked(x_hat, x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step, weight: torch.Tensor,
                          loss: str, huber_eps: float, backend=None):
    """mcm_target_loss on per-sample logSNRs and weight [B], for callers that have checked their inputs."""
    impl = dispatch("mcm_target_sqdist", x_hat.device, needs_grad(x_hat), backend)
    return _weighted(impl(x_hat, x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step), weight, loss, huber_eps)


def mcm_target(x_ref, z_s, z_t, t, s, t_step, schedule, backend=None):
    """x_target: the x_hat whose DDIM jump from (z_t, t) to t_step lands where x_ref's jump from (z_s, s) does.

    Algorithm 1, steps 6-7: DDIM_{s->t_step}(x_ref, z_s), then invDDIM_{t->t_step} against z_t; t_step <= s <= t,
    t_step < t, each a float, 0-d or [B] tensor. Differentiable (a per-sample linear map).
    """
    return target_unchecked(x_ref, z_s, z_t, *_target_logsnrs(x_ref, z_s, z_t, t, s, t_step, schedule), backend)


def mcm_loss(x_hat, target, weight=1.0, loss="pseudo_huber", huber_eps=1e-4, backend=None):
    """Per-sample weight * rho(||x_hat - target||^2) [B] (Algorithm 1, step 8), rho = pseudo-Huber or identity.

    weight: a float or a [B] tensor (e.g. SNR(t) + 1). Float32 result (float64 for float64 inputs);
    differentiable in x_hat, target and weight.
    """
    check_float_tensor("x_hat", x_hat)
    check_like("target", target, "x_hat", x_hat)
    _check_loss_options(loss, huber_eps)
    weight = _weight(weight, x_hat)
    impl = dispatch("mcm_sqdist", x_hat.device, needs_grad(x_hat, target), backend)
    return _weighted(impl(x_hat, target), weight, loss, huber_eps)


def mcm_target_loss(x_hat, x_ref, z_s, z_t, t, s, t_step, schedule, weight=1.0, loss="pseudo_huber",
                    huber_eps=1e-4, backend=None):
    """mcm_loss(x_hat, sg(mcm_target(x_ref, z_s, z_t, t, s, t_step))) in one pass, the target never stored.

    The target is a stop-gradient (Algorithm 1): gradients flow to x_hat and weight only.
    """
    check_float_tensor("x_hat", x_hat)
    lt, ls, lq = _target_logsnrs(x_ref, z_s, z_t, t, s, t_step, schedule)
    check_like("x_hat", x_hat, "x_ref", x_ref)
    _check_loss_options(loss, huber_eps)
    return target_loss_unchecked(x_hat, x_ref, z_s, z_t, lt, ls, lq, _weight(weight, x_hat), loss, huber_eps, backend)
