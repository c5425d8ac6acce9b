"""DDIM and aDDIM updates (math.md §2-3) in Triton: the "triton" backend of ddim_step and addim_step.

z_s = p x_hat + q (z_t - r x_hat) per sample, p = alpha_s, r = alpha_t, q = sigma_s / sigma_t (DDIM) or
c / sigma_t with c^2 = sigma_s^2 + d K^2 x_var / ||eps_hat||^2 (aDDIM). The grid is (chunk, sample): each
program owns BLOCK elements of one sample. aDDIM on samples of at most ROW_MAX elements runs one program per
sample that holds it in registers: one read of x_hat and z_t, one write (not float64, which spilled there: the
sm_90a table of docs/benchmarks.md). Larger samples, and float64, take two kernels:
one partial sum of (z_t - alpha_t x_hat)^2 per program, summed per sample by torch in a fixed order
(deterministic), then the update, which reads x_hat and z_t a second time. Arithmetic in float32 (float64 for float64
data), coefficients in float64. Inputs are made contiguous once. The backward is the closed form of
mcm_fast.solvers (plain PyTorch), as for the C++ and CUDA backends.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from mcm_fast._checks import compute_dtype
from mcm_fast.kernels.common import BLOCK, alpha_sigma, cast, ddim_coefs, tl_compute_dtype

ROW_MAX = 16384  # elements per sample that one aDDIM program holds (e.g. 3 x 64 x 64 images, 4 x 64 x 64 latents)


@triton.jit
def _residual_sq_partials_kernel(x_ptr, z_ptr, logsnr_t_ptr, partials_ptr, d, chunks,
                                 BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    """partials[b, chunk] = sum over the chunk of (z_t - alpha_t x_hat)^2 = sigma_t^2 eps_hat^2."""
    chunk, b = tl.program_id(0), tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    base = b.to(tl.int64) * d
    r, _ = alpha_sigma(tl.load(logsnr_t_ptr + b).to(tl.float64))
    x = tl.load(x_ptr + base + offs, mask=mask, other=0).to(COMPUTE)
    z = tl.load(z_ptr + base + offs, mask=mask, other=0).to(COMPUTE)
    e = z - r.to(COMPUTE) * x
    tl.store(partials_ptr + b * chunks + chunk, tl.sum(e * e, axis=0))


@triton.jit
def _addim_q(p, q, r, x_var_ptr, b, norm_sq, d):
    """aDDIM's sqrt(q^2 + d K^2 x_var / ||z_t - r x_hat||^2), K = p - r q; x_var = 0 is DDIM exactly, even at norm 0."""
    x_var = tl.load(x_var_ptr + b).to(tl.float64)
    k = p - r * q
    return tl.sqrt(q * q + tl.where(x_var > 0, d * k * k * x_var / norm_sq, 0.0))


@triton.jit
def _addim_step_row_kernel(x_ptr, z_ptr, out_ptr, logsnr_t_ptr, logsnr_s_ptr, x_var_ptr, d, BLOCK_D: tl.constexpr,
                           COMPUTE: tl.constexpr):
    """aDDIM for one whole sample (d <= BLOCK_D) per program: the norm and the update from one read."""
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < d
    base = b.to(tl.int64) * d
    p, q, r = ddim_coefs(tl.load(logsnr_t_ptr + b).to(tl.float64), tl.load(logsnr_s_ptr + b).to(tl.float64))
    x = tl.load(x_ptr + base + offs, mask=mask, other=0).to(COMPUTE)
    e = tl.load(z_ptr + base + offs, mask=mask, other=0).to(COMPUTE) - r.to(COMPUTE) * x  # sigma_t eps_hat
    q = _addim_q(p, q, r, x_var_ptr, b, tl.sum(e * e, axis=0).to(tl.float64), d)
    tl.store(out_ptr + base + offs, cast(p.to(COMPUTE) * x + q.to(COMPUTE) * e, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ddim_step_fwd_kernel(x_ptr, z_ptr, out_ptr, logsnr_t_ptr, logsnr_s_ptr, x_var_ptr, norm_sq_ptr, d,
                          BLOCK: tl.constexpr, ADJUSTED: tl.constexpr, COMPUTE: tl.constexpr):
    """z_s = p x_hat + q (z_t - r x_hat); with ADJUSTED, q = sqrt(q^2 + d K^2 x_var / ||z_t - r x_hat||^2)."""
    chunk, b = tl.program_id(0), tl.program_id(1)
    p, q, r = ddim_coefs(tl.load(logsnr_t_ptr + b).to(tl.float64), tl.load(logsnr_s_ptr + b).to(tl.float64))
    if ADJUSTED:
        q = _addim_q(p, q, r, x_var_ptr, b, tl.load(norm_sq_ptr + b).to(tl.float64), d)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    base = b.to(tl.int64) * d
    x = tl.load(x_ptr + base + offs, mask=mask).to(COMPUTE)
    z = tl.load(z_ptr + base + offs, mask=mask).to(COMPUTE)
    out = p.to(COMPUTE) * x + q.to(COMPUTE) * (z - r.to(COMPUTE) * x)
    tl.store(out_ptr + base + offs, cast(out, out_ptr.dtype.element_ty), mask=mask)


def ddim_step(x_hat, z_t, logsnr_t, logsnr_s, x_var=None):
    """z_s of DDIM, or of aDDIM when x_var ([B]) is given; x_hat, z_t [B, ...], logSNRs [B]."""
    x, z = x_hat.contiguous(), z_t.contiguous()
    logsnr_t, logsnr_s = logsnr_t.contiguous(), logsnr_s.contiguous()  # [B] each, maybe an expanded scalar
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    batch = x.shape[0]
    if x.numel() == 0:
        return out
    d = x.numel() // batch
    if x_var is not None and d <= ROW_MAX and x.dtype != torch.float64:
        block_d = triton.next_power_of_2(d)
        wrap_triton(_addim_step_row_kernel)[(batch,)](x, z, out, logsnr_t, logsnr_s, x_var.contiguous(), d,
                                                      BLOCK_D=block_d, COMPUTE=tl_compute_dtype(x),
                                                      num_warps=min(16, max(4, block_d // 1024)))
        return out
    chunks = triton.cdiv(d, BLOCK)
    grid = (chunks, batch)
    norm_sq = logsnr_t  # unread by DDIM
    if x_var is not None:
        partials = torch.empty(batch, chunks, device=x.device, dtype=compute_dtype(x))
        wrap_triton(_residual_sq_partials_kernel)[grid](x, z, logsnr_t, partials, d, chunks, BLOCK=BLOCK,
                                                        COMPUTE=tl_compute_dtype(x), num_warps=8)
        norm_sq = partials.sum(1)  # ||z_t - alpha_t x_hat||^2 = sigma_t^2 ||eps_hat||^2, in a fixed order
    wrap_triton(_ddim_step_fwd_kernel)[grid](
        x, z, out, logsnr_t, logsnr_s, logsnr_t if x_var is None else x_var.contiguous(), norm_sq, d, BLOCK=BLOCK,
        ADJUSTED=x_var is not None, COMPUTE=tl_compute_dtype(x), num_warps=8)
    return out
