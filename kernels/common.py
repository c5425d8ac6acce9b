"""What the Triton kernels share: the per-sample coefficients of the DDIM family (math.md §1-2) in float64,
the two places where Triton's interpreter needs help (cast, dot_operand), and the launchers' block size and
dtypes.

Each program computes its sample's coefficients from the [B] logSNRs itself: no host sync and no extra
launch, so the kernels can be captured in a CUDA graph.
"""
import os

import torch
import triton
import triton.language as tl

from mcm_fast._checks import compute_dtype

INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")
BLOCK = 4096  # elements of one sample per program


def tl_compute_dtype(x: torch.Tensor):
    """compute_dtype(x) (float64 for float64 data, else float32) as the Triton dtype of a kernel's arithmetic."""
    return tl.float64 if compute_dtype(x) == torch.float64 else tl.float32


@triton.jit
def alpha_sigma(logsnr):
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)) for a float64 logSNR."""
    alpha = tl.sqrt(1.0 / (1.0 + tl.exp(-logsnr)))
    sigma = tl.sqrt(1.0 / (1.0 + tl.exp(logsnr)))
    return alpha, sigma


@triton.jit
def ddim_coefs(logsnr_t, logsnr_s):
    """(p, q, r) of z_s = p x_hat + q (z_t - r x_hat): alpha_s, sigma_s / sigma_t, alpha_t."""
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    return alpha_s, sigma_s / sigma_t, alpha_t


@triton.jit
def target_coefs(logsnr_t, logsnr_s, logsnr_step):
    """(a, b, c) of x_target = a x_ref + b z_s + c z_t: DDIM s -> t_step then invDDIM t -> t_step; a = 0 at s =
    t_step."""
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    alpha_q, sigma_q = alpha_sigma(logsnr_step)
    identity = logsnr_s == logsnr_step
    q1 = tl.where(identity, 1.0, sigma_q / sigma_s)  # z_ref = k1 x_ref + q1 z_s
    k1 = tl.where(identity, 0.0, alpha_q - alpha_s * q1)
    ratio = sigma_q / sigma_t
    k = alpha_q - alpha_t * ratio
    return k1 / k, q1 / k, -ratio / k


@triton.jit
def cast(x, dtype: tl.constexpr):
    """x in dtype, rounded to nearest even. Under Triton 3.6's interpreter (the CPU tests) bfloat16 is rounded
    with integer ops, because its own conversion mis-rounds when the carry crosses a power of 2."""
    if INTERPRETED and dtype == tl.bfloat16:
        u = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        bits = tl.where((u & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded)  # NaN stays a quiet NaN
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def dot_operand(x):
    """x as a tl.dot operand. The interpreter's dot reads bfloat16 as integers, so there bfloat16 goes to
    float32 first: the same result, since products of bfloat16 numbers are exact in float32."""
    if INTERPRETED and x.dtype == tl.bfloat16:
        return x.to(tl.float32)
    else:
        return x
