"""The MCM target and squared distance (Algorithm 1, steps 6-8) in Triton: the "triton" backend of
mcm_target, mcm_loss and mcm_target_loss.

x_target = a x_ref + b z_s + c z_t with per-sample (a, b, c) from the three logSNRs (coefs.target_coefs);
the loss kernel writes one partial sum of (x_hat - x_target)^2 per program and, when a gradient will be
needed, diff = x_hat - x_target in float32 (float64 for float64 data): the gradient up to the per-sample
factor 2 dL/d||.||^2 that only the full sum fixes (style.md: a loss computes its cheap gradient in forward).
The backward kernel applies that factor and rounds once to x_hat's dtype: one read of diff, one write. (A
float16/bfloat16 diff would save a quarter of the bytes but round the gradient twice.) The grid is
(chunk, sample); partial sums are added per
sample in a fixed order by torch (deterministic). The pseudo-Huber and weighting on [B] stay in PyTorch
(mcm_fast.losses). Arithmetic in float32 (float64 for float64 data).
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from mcm_fast._checks import compute_dtype
from mcm_fast.kernels.common import BLOCK, cast, target_coefs, tl_compute_dtype


@triton.jit
def _target(x_ref_ptr, z_s_ptr, z_t_ptr, logsnr_t_ptr, logsnr_s_ptr, logsnr_step_ptr, b, offs, mask,
            COMPUTE: tl.constexpr):
    """x_target at offs of sample b, in COMPUTE; the x_ref term is dropped where a = 0 (s = t_step)."""
    a, bc, c = target_coefs(tl.load(logsnr_t_ptr + b).to(tl.float64), tl.load(logsnr_s_ptr + b).to(tl.float64),
                            tl.load(logsnr_step_ptr + b).to(tl.float64))
    x_ref = tl.load(x_ref_ptr + offs, mask=mask, other=0).to(COMPUTE)
    z_s = tl.load(z_s_ptr + offs, mask=mask, other=0).to(COMPUTE)
    z_t = tl.load(z_t_ptr + offs, mask=mask, other=0).to(COMPUTE)
    ref_term = tl.where(a != 0, a.to(COMPUTE) * x_ref, 0.0)
    return ref_term + bc.to(COMPUTE) * z_s + c.to(COMPUTE) * z_t


@triton.jit
def _mcm_target_fwd_kernel(x_ref_ptr, z_s_ptr, z_t_ptr, out_ptr, logsnr_t_ptr, logsnr_s_ptr, logsnr_step_ptr, d,
                           BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    chunk, b = tl.program_id(0), tl.program_id(1)
    offs = b.to(tl.int64) * d + chunk * BLOCK + tl.arange(0, BLOCK)
    mask = chunk * BLOCK + tl.arange(0, BLOCK) < d
    target = _target(x_ref_ptr, z_s_ptr, z_t_ptr, logsnr_t_ptr, logsnr_s_ptr, logsnr_step_ptr, b, offs, mask, COMPUTE)
    tl.store(out_ptr + offs, cast(target, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mcm_sqdist_fwd_kernel(x_hat_ptr, target_ptr, z_s_ptr, z_t_ptr, logsnr_t_ptr, logsnr_s_ptr, logsnr_step_ptr,
                           diff_ptr, partials_ptr, d, chunks, BLOCK: tl.constexpr, FUSED_TARGET: tl.constexpr,
                           SAVE_DIFF: tl.constexpr, COMPUTE: tl.constexpr):
    """partials[b, chunk] = sum (x_hat - x_target)^2; x_target read (target_ptr) or, with FUSED_TARGET,
    computed from x_ref = target_ptr, z_s and z_t. SAVE_DIFF writes x_hat - x_target."""
    chunk, b = tl.program_id(0), tl.program_id(1)
    offs = b.to(tl.int64) * d + chunk * BLOCK + tl.arange(0, BLOCK)
    mask = chunk * BLOCK + tl.arange(0, BLOCK) < d
    if FUSED_TARGET:
        target = _target(target_ptr, z_s_ptr, z_t_ptr, logsnr_t_ptr, logsnr_s_ptr, logsnr_step_ptr, b, offs, mask,
                         COMPUTE)
    else:
        target = tl.load(target_ptr + offs, mask=mask, other=0).to(COMPUTE)
    diff = tl.load(x_hat_ptr + offs, mask=mask, other=0).to(COMPUTE) - target
    if SAVE_DIFF:
        tl.store(diff_ptr + offs, cast(diff, diff_ptr.dtype.element_ty), mask=mask)
    tl.store(partials_ptr + b * chunks + chunk, tl.sum(diff * diff, axis=0))


@triton.jit
def _mcm_sqdist_bwd_kernel(diff_ptr, grad_ptr, out_ptr, d, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    """dL/dx_hat = 2 dL/d||x_hat - x_target||^2 (x_hat - x_target), per sample."""
    chunk, b = tl.program_id(0), tl.program_id(1)
    offs = b.to(tl.int64) * d + chunk * BLOCK + tl.arange(0, BLOCK)
    mask = chunk * BLOCK + tl.arange(0, BLOCK) < d
    scale = 2 * tl.load(grad_ptr + b).to(COMPUTE)
    diff = tl.load(diff_ptr + offs, mask=mask).to(COMPUTE)
    tl.store(out_ptr + offs, cast(scale * diff, out_ptr.dtype.element_ty), mask=mask)


def _grid(x: torch.Tensor):
    """(d, (chunks, B)) of a [B, ...] tensor; d = elements per sample."""
    d = x.numel() // x.shape[0]
    return d, (triton.cdiv(d, BLOCK), x.shape[0])


def mcm_target(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step):
    """x_target [B, ...] in x_ref's dtype, contiguous."""
    x, zs, zt = x_ref.contiguous(), z_s.contiguous(), z_t.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel():
        d, grid = _grid(x)
        logsnrs = (v.contiguous() for v in (logsnr_t, logsnr_s, logsnr_step))
        wrap_triton(_mcm_target_fwd_kernel)[grid](x, zs, zt, out, *logsnrs, d, BLOCK=BLOCK, COMPUTE=tl_compute_dtype(x),
                                                  num_warps=8)
    return out


def mcm_sqdist(x_hat, target, save_diff, z_s=None, z_t=None, logsnrs=None):
    """(||x_hat - x_target||^2 [B], diff or an empty tensor). x_target is target, or with z_s, z_t and the
    three logSNRs given, the MCM target of x_ref = target computed on the fly."""
    x = x_hat.contiguous()
    fused = z_s is not None
    operands = [t.contiguous() for t in ((target, z_s, z_t) if fused else (target,))]
    diff = torch.empty(x.shape, device=x.device, dtype=compute_dtype(x)) if save_diff else x.new_empty(0)
    batch = x.shape[0]
    if x.numel() == 0:
        return x.new_zeros(batch, dtype=compute_dtype(x)), diff
    d, grid = _grid(x)
    partials = torch.empty(batch, grid[0], device=x.device, dtype=compute_dtype(x))
    extra = operands[1:] + [v.contiguous() for v in logsnrs] if fused else [x] * 5  # unread without FUSED_TARGET
    wrap_triton(_mcm_sqdist_fwd_kernel)[grid](
        x, operands[0], *extra, diff if save_diff else x, partials, d, grid[0], BLOCK=BLOCK, FUSED_TARGET=fused,
        SAVE_DIFF=save_diff, COMPUTE=tl_compute_dtype(x), num_warps=8)
    return partials.sum(1), diff


def mcm_sqdist_backward(diff, grad_dist_sq, dtype):
    """dL/dx_hat [B, ...] in dtype (x_hat's) from the saved diff and dL/d||x_hat - x_target||^2 [B]."""
    out = torch.empty(diff.shape, device=diff.device, dtype=dtype)
    if diff.numel():
        d, grid = _grid(diff)
        wrap_triton(_mcm_sqdist_bwd_kernel)[grid](diff, grad_dist_sq.contiguous(), out, d, BLOCK=BLOCK,
                                                  COMPUTE=tl_compute_dtype(diff), num_warps=8)
    return out
