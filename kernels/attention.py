"""Flash attention in Triton: the "triton" backend of mf.attention (non-causal, no dropout, scale 1/sqrt(d)).

Forward (FlashAttention-2, Dao 2023): one program per (block of BLOCK_M queries, batch x head); it streams
the keys and values in blocks of BLOCK_N with an online softmax in float32 (base 2: scores are scaled by
log2(e) / sqrt(d)), so no tokens x tokens matrix exists in memory, and saves the log-sum-exp per query.
Backward: a preprocess kernel writes delta = rowsum(dO * O); one kernel per key block accumulates dK and dV
over the query blocks, another per query block accumulates dQ over the key blocks (no atomics, so the result
is deterministic), both recomputing the probabilities from the saved log-sum-exp.

Limits and differences from torch's SDPA: head dims 32, 64 and 128; any token count (the ragged tail is
masked); float16 and bfloat16 (matmuls on tensor cores, accumulation in float32) and float32 (IEEE matmuls,
not TF32, so float32 stays exact to its own rounding). Inputs may be strided views ([B, H, tokens, d] with
any strides); outputs are contiguous. Token counts are compile-time constants (as in Triton's tutorial):
each new count compiles once, and loops over them stay plain Python ranges, which Triton's interpreter (the
CPU tests) needs. Block sizes are autotuned per shape on the GPU among configurations chosen for Hopper;
under the interpreter one small configuration runs.
"""
import math
import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from mcm_fast.kernels.common import cast, dot_operand

HEAD_DIMS = (32, 64, 128)
LOG2E = 1.4426950408889634
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# Autotune configurations (BLOCK_M, BLOCK_N, warps, stages) per kernel and head dim for float16 and bfloat16, kept
# by the sm_90a table of docs/benchmarks.md (scripts/hopper_report.py): each compiles without spilling, runs its
# matrix products on wgmma and keeps two blocks resident per H100 SM. The dK/dV kernel's products have BLOCK_N
# rows (wgmma needs 64 per warpgroup); at head dim 128 the 8-warp and the large tiles hold one block per SM.
_SMALL_HEADS = ((128, 64, 8, 3), (128, 64, 4, 4), (64, 64, 4, 3), (64, 128, 4, 3), (128, 32, 4, 4), (64, 32, 4, 4))
HOPPER_CONFIGS = {
    "fwd": {32: _SMALL_HEADS, 64: _SMALL_HEADS,
            128: ((64, 64, 4, 3), (64, 64, 4, 2), (128, 32, 4, 4), (128, 32, 4, 3), (64, 32, 4, 4))},
    "dkdv": dict.fromkeys((32, 64), ((64, 64, 4, 3), (64, 64, 4, 2), (32, 64, 4, 3), (32, 64, 4, 4), (32, 128, 8, 2)))
    | {128: ((64, 64, 4, 2), (32, 64, 4, 3), (32, 64, 4, 2), (32, 64, 4, 4), (16, 64, 4, 3))},
    "dq": {32: _SMALL_HEADS, 64: _SMALL_HEADS,
           128: ((64, 32, 4, 4), (64, 32, 4, 3), (64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 3))},
}
# float32 runs IEEE products on the CUDA cores, in registers: at head dim 128 every 4-warp tile spilled (even
# 32 x 32) and the large ones took minutes to compile; 32 x 32 on 8 warps, unpipelined, does not spill.
FLOAT32_CONFIGS = ((32, 32, 8, 1),)
_INTERPRETED_CONFIG = (32, 32, 4, 1)


def _config(block_m, block_n, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _shape(config):
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


def _configs(kernel):
    """Every configuration the kernel may take (under the interpreter, one small one)."""
    if INTERPRETED:
        return [_config(*_INTERPRETED_CONFIG)]
    shapes = [s for per_dim in HOPPER_CONFIGS[kernel].values() for s in per_dim] + list(FLOAT32_CONFIGS)
    return [_config(*s) for s in dict.fromkeys(shapes)]


def _prune(kernel):
    """Keeps the configurations of the call's head dim and precision (triton.autotune's early_config_prune)."""
    def prune(configs, named_args, **kwargs):
        if INTERPRETED:
            return configs
        wanted = FLOAT32_CONFIGS if kwargs["PRECISION"] == "ieee" else HOPPER_CONFIGS[kernel][kwargs["HEAD_DIM"]]
        return [c for c in configs if _shape(c) in wanted]
    return {"early_config_prune": prune}


@triton.jit
def _head_offsets(bh, H, stride_b, stride_h):
    """The offset of head bh (= batch * H + head) of a [B, H, tokens, d] tensor."""
    return (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h


@triton.autotune(configs=_configs("fwd"), key=["N", "M", "HEAD_DIM", "PRECISION"], prune_configs_by=_prune("fwd"))
@triton.jit
def _attention_fwd_kernel(Q, K, V, O, LSE, sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, H,
                          scale_log2, N: tl.constexpr, M: tl.constexpr, HEAD_DIM: tl.constexpr,
                          PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """O = softmax(Q K^T / sqrt(d)) V for BLOCK_M queries of one head; LSE = log2 sum exp2(scores)."""
    start, bh = tl.program_id(0), tl.program_id(1)
    rows = start * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_N)
    q_ptrs = Q + _head_offsets(bh, H, sqb, sqh) + rows[:, None] * sqn + dims[None, :] * sqd
    q = dot_operand(tl.load(q_ptrs, mask=rows[:, None] < N, other=0))
    k_head = K + _head_offsets(bh, H, skb, skh)
    v_head = V + _head_offsets(bh, H, svb, svh)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the scores (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, M, BLOCK_N):
        keys = start_n + cols
        k_t = dot_operand(tl.load(k_head + keys[None, :] * skn + dims[:, None] * skd, mask=keys[None, :] < M, other=0))
        s = tl.dot(q, k_t, input_precision=PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N]
        s = tl.where(keys[None, :] < M, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        correction = tl.exp2(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, axis=1)
        v = dot_operand(tl.load(v_head + keys[:, None] * svn + dims[None, :] * svd, mask=keys[:, None] < M, other=0))
        p = dot_operand(cast(p, V.dtype.element_ty))
        acc = acc * correction[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = O + bh.to(tl.int64) * N * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :]
    tl.store(o_ptrs, cast(acc, O.dtype.element_ty), mask=rows[:, None] < N)
    tl.store(LSE + bh.to(tl.int64) * N + rows, m_i + tl.log2(l_i), mask=rows < N)


@triton.jit
def _attention_bwd_preprocess_kernel(O, DO, DELTA, N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) per query, in float32 (O and dO contiguous [B * H, N, d])."""
    start, bh = tl.program_id(0), tl.program_id(1)
    rows = start * BLOCK_M + tl.arange(0, BLOCK_M)
    offs = bh.to(tl.int64) * N * HEAD_DIM + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    o = tl.load(O + offs, mask=rows[:, None] < N, other=0).to(tl.float32)
    do = tl.load(DO + offs, mask=rows[:, None] < N, other=0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * N + rows, tl.sum(o * do, axis=1), mask=rows < N)


@triton.autotune(configs=_configs("dkdv"), key=["N", "M", "HEAD_DIM", "PRECISION"], prune_configs_by=_prune("dkdv"))
@triton.jit
def _attention_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh,
                               svn, svd, H, scale, scale_log2, N: tl.constexpr, M: tl.constexpr, HEAD_DIM: tl.constexpr,
                               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dV = P^T dO and dK = scale dS^T Q for BLOCK_N keys, dS = P (dP - delta), dP = dO V^T, over all queries."""
    start, bh = tl.program_id(0), tl.program_id(1)
    keys = start * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    rows = tl.arange(0, BLOCK_M)
    k = dot_operand(tl.load(K + _head_offsets(bh, H, skb, skh) + keys[:, None] * skn + dims[None, :] * skd,
                            mask=keys[:, None] < M, other=0))
    v = dot_operand(tl.load(V + _head_offsets(bh, H, svb, svh) + keys[:, None] * svn + dims[None, :] * svd,
                            mask=keys[:, None] < M, other=0))
    q_head = Q + _head_offsets(bh, H, sqb, sqh)
    do_head = DO + bh.to(tl.int64) * N * HEAD_DIM
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        queries = start_m + rows
        valid = queries < N
        q_t = dot_operand(tl.load(q_head + queries[None, :] * sqn + dims[:, None] * sqd, mask=valid[None, :], other=0))
        do = dot_operand(tl.load(do_head + queries[:, None] * HEAD_DIM + dims[None, :], mask=valid[:, None], other=0))
        lse = tl.load(LSE + bh.to(tl.int64) * N + queries, mask=valid, other=0)
        delta = tl.load(DELTA + bh.to(tl.int64) * N + queries, mask=valid, other=0)
        s_t = tl.dot(k, q_t, input_precision=PRECISION) * scale_log2  # [BLOCK_N, BLOCK_M]
        p_t = tl.where(valid[None, :], tl.exp2(s_t - lse[None, :]), 0.0)
        dv += tl.dot(dot_operand(cast(p_t, DO.dtype.element_ty)), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(dot_operand(cast(ds_t, Q.dtype.element_ty)), tl.trans(q_t), input_precision=PRECISION)
    offs = bh.to(tl.int64) * M * HEAD_DIM + keys[:, None] * HEAD_DIM + dims[None, :]
    tl.store(DK + offs, cast(dk * scale, DK.dtype.element_ty), mask=keys[:, None] < M)
    tl.store(DV + offs, cast(dv, DV.dtype.element_ty), mask=keys[:, None] < M)


@triton.autotune(configs=_configs("dq"), key=["N", "M", "HEAD_DIM", "PRECISION"], prune_configs_by=_prune("dq"))
@triton.jit
def _attention_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                             H, scale, scale_log2, N: tl.constexpr, M: tl.constexpr, HEAD_DIM: tl.constexpr,
                             PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ = scale dS K for BLOCK_M queries, over all keys."""
    start, bh = tl.program_id(0), tl.program_id(1)
    rows = start * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_N)
    valid = rows < N
    q = dot_operand(tl.load(Q + _head_offsets(bh, H, sqb, sqh) + rows[:, None] * sqn + dims[None, :] * sqd,
                            mask=valid[:, None], other=0))
    do = dot_operand(tl.load(DO + bh.to(tl.int64) * N * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :],
                             mask=valid[:, None], other=0))
    lse = tl.load(LSE + bh.to(tl.int64) * N + rows, mask=valid, other=0)
    delta = tl.load(DELTA + bh.to(tl.int64) * N + rows, mask=valid, other=0)
    k_head = K + _head_offsets(bh, H, skb, skh)
    v_head = V + _head_offsets(bh, H, svb, svh)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, M, BLOCK_N):
        keys = start_n + cols
        k_t = dot_operand(tl.load(k_head + keys[None, :] * skn + dims[:, None] * skd, mask=keys[None, :] < M, other=0))
        v_t = dot_operand(tl.load(v_head + keys[None, :] * svn + dims[:, None] * svd, mask=keys[None, :] < M, other=0))
        s = tl.dot(q, k_t, input_precision=PRECISION) * scale_log2
        p = tl.where(keys[None, :] < M, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, v_t, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(dot_operand(cast(ds, K.dtype.element_ty)), tl.trans(k_t), input_precision=PRECISION)
    offs = bh.to(tl.int64) * N * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :]
    tl.store(DQ + offs, cast(dq * scale, DQ.dtype.element_ty), mask=valid[:, None])


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _precision(q):
    return "ieee" if q.dtype == torch.float32 else "tf32"  # tf32 is ignored for float16/bfloat16 operands


def attention_forward(q, k, v):
    """(o [B, H, N, d] contiguous, lse [B, H, N] float32 in log2 units) for q [B, H, N, d], k, v [B, H, M, d]."""
    B, H, N, D = q.shape
    M = k.shape[2]
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    if o.numel() == 0:
        return o, lse
    scale_log2 = LOG2E / math.sqrt(D)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    wrap_triton(_attention_fwd_kernel)[grid](q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), H, scale_log2,
                                             N=N, M=M, HEAD_DIM=D, PRECISION=_precision(q))
    return o, lse


def attention_backward(do, q, k, v, o, lse):
    """(dq, dk, dv), contiguous, from the forward's o and lse and the gradient do of o."""
    B, H, N, D = q.shape
    M = k.shape[2]
    do = do.contiguous()
    dq, dk, dv = (torch.empty(x.shape, device=x.device, dtype=x.dtype) for x in (q, k, v))
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    wrap_triton(_attention_bwd_preprocess_kernel)[(triton.cdiv(N, 64), B * H)](
        o, do, delta, N=N, HEAD_DIM=D, BLOCK_M=64)
    scale = 1 / math.sqrt(D)
    scale_log2 = LOG2E * scale
    strides = (*_strides(q), *_strides(k), *_strides(v))
    grid_kv = lambda meta: (triton.cdiv(M, meta["BLOCK_N"]), B * H)  # noqa: E731
    wrap_triton(_attention_bwd_dkdv_kernel)[grid_kv](q, k, v, do, lse, delta, dk, dv, *strides, H, scale, scale_log2,
                                                     N=N, M=M,
                                                     HEAD_DIM=D, PRECISION=_precision(q))
    grid_q = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    wrap_triton(_attention_bwd_dq_kernel)[grid_q](q, k, v, do, lse, delta, dq, *strides, H, scale, scale_log2, N=N, M=M,
                                                  HEAD_DIM=D, PRECISION=_precision(q))
    return dq, dk, dv
