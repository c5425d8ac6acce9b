"""Attention forward and forward + backward: the Triton flash kernel against each backend torch's
scaled_dot_product_attention offers on the device (flash, cuDNN, memory-efficient; math on CPU), in the same
run, as TFLOP/s (4 B H N^2 d for the forward, 2.5 times that for the backward) and as the fraction of the bf16
matmul rate measured in the same run.

Shapes are the UViT's: head dims 64 and 128, 256 to 4096 tokens (16x16 to 64x64 feature maps), batch x heads
filling the GPU (65536 tokens per call). On CPU, small shapes and float32. Run: pytest benchmarks/test_attention.py
"""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import mcm_fast as mf
from benchmarks.conftest import DEVICE
from benchmarks.workloads import (
    ATTENTION_HEAD_DIMS,
    ATTENTION_TOKENS,
    ATTENTION_TOTAL_TOKENS,
    attention_bytes,
    attention_flops,
    attention_shape,
)
from mcm_fast.ops.registry import runs_on

CUDA = DEVICE.type == "cuda"
DTYPE = torch.bfloat16 if CUDA else torch.float32
TOKENS = ATTENTION_TOKENS if CUDA else [64, 256]
HEAD_DIMS = ATTENTION_HEAD_DIMS if CUDA else [64]
TOTAL_TOKENS = ATTENTION_TOTAL_TOKENS if CUDA else 1024  # batch x heads x tokens per call
SDPA = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION} if CUDA else {
    "sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-math": SDPBackend.MATH}
IMPLS = list(SDPA) + (["triton"] if runs_on("triton",
                                             DEVICE) and "triton" in mf.available_backends("attention") else [])


def attention_fn(impl):
    if impl == "triton":
        return lambda q, k, v: mf.attention(q, k, v, backend="triton")

    def sdpa(q, k, v):
        with sdpa_kernel(SDPA[impl]):
            return F.scaled_dot_product_attention(q, k, v)

    return sdpa


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_attention(measure, backward, tokens, head_dim, impl):
    shape = attention_shape(tokens, head_dim, TOTAL_TOKENS)
    batch, heads, _, _ = shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=DTYPE, generator=g).requires_grad_(backward)
               for _ in range(3))
    fn = attention_fn(impl)
    dout = torch.randn_like(q)
    try:
        fn(q, k, v)
    except RuntimeError as error:  # an SDPA backend this device or shape lacks
        pytest.skip(f"{impl}: {str(error).splitlines()[0]}")

    def run():
        out = fn(q, k, v)
        if backward:
            torch.autograd.grad(out, (q, k, v), dout)

    group = f"attention-{'fwd+bwd' if backward else 'fwd'}-N{tokens}-d{head_dim}-B{batch}xH{heads}"
    measure(run, group=group, impl=impl, flops=attention_flops(shape, backward),
            nbytes=attention_bytes(shape, backward, DTYPE.itemsize))
