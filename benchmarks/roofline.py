"""The best time each benchmark call can reach on an H100 SXM or an H200, from public peak rates: the larger of
its least bytes over the memory bandwidth and its FLOPs over the dense bf16 tensor-core rate. Attention also at
the fractions of that rate FlashAttention-2 and -3 report on the H100. Used by scripts/hopper_report.py (the
prediction) and benchmarks/conftest.py (measured against it on a GPU).
"""
import torch

from benchmarks.workloads import (
    ATTENTION_HEAD_DIMS,
    ATTENTION_TOKENS,
    ELEMENTWISE_DTYPES,
    GPU_SIZES_MIB,
    TENSORS_MOVED,
    attention_bytes,
    attention_flops,
    attention_shape,
    elementwise_bytes,
)

# NVIDIA's H100 (SXM5) and H200 product specifications: HBM bandwidth in B/s, dense bf16 tensor FLOP/s (the
# sheets print 1979 TFLOP/s "with sparsity"), streaming multiprocessors.
PEAKS = {"H100": {"bandwidth": 3.35e12, "bf16": 989e12, "sms": 132},
         "H200": {"bandwidth": 4.8e12, "bf16": 989e12, "sms": 132}}
# Fractions of the bf16 peak reached by attention: FlashAttention-2 about 35-40% on the H100 (its forward), FA-3
# 60-75% (Shah et al. 2024, "FlashAttention-3", forward at head dims 64-256).
ATTENTION_FRACTIONS = {"FA2": (0.35, 0.40), "FA3": (0.60, 0.75)}


def device(name: str) -> str | None:
    """"H100" or "H200" for a CUDA device name (torch.cuda.get_device_name), None for another device."""
    return next((key for key in PEAKS if key in name), None)


def best_seconds(nbytes: float, flops: float, gpu: str) -> float:
    """The roofline: the least time to move nbytes and compute flops (bf16 tensor cores) on gpu."""
    return max(nbytes / PEAKS[gpu]["bandwidth"], flops / PEAKS[gpu]["bf16"])


def benchmark_calls():
    """(group, bytes, FLOPs) of every GPU benchmark row of benchmarks/test_ddim.py, test_mcm_loss.py and
    test_attention.py, named as the benchmarks name their groups."""
    for op in TENSORS_MOVED:
        for size in GPU_SIZES_MIB:
            for dtype in ELEMENTWISE_DTYPES:
                yield f"{op}-{size}MiB-{dtype}", elementwise_bytes(op, size, getattr(torch, dtype).itemsize), 0.0
    for backward in (False, True):
        for tokens in ATTENTION_TOKENS:
            for head_dim in ATTENTION_HEAD_DIMS:
                shape = attention_shape(tokens, head_dim)
                batch, heads, _, _ = shape
                group = f"attention-{'fwd+bwd' if backward else 'fwd'}-N{tokens}-d{head_dim}-B{batch}xH{heads}"
                yield group, attention_bytes(shape, backward, 2), attention_flops(shape, backward)
