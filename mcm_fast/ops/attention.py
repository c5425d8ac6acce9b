"""Non-causal multi-head attention softmax(q k^T / sqrt(d)) v, dispatched over the registry's backends.

Backends: "triton" (kernels/attention.py: flash attention forward and backward, head dims 32, 64 and 128,
on CUDA, or on CPU under TRITON_INTERPRET=1), "sdpa" (torch.nn.functional.scaled_dot_product_attention:
flash, cuDNN or memory-efficient kernels where torch has them, any device) and "reference" (the formula in
float32, or float64 for float64 inputs: the specification the others are tested against). All are
differentiable; the Triton one is a torch.library op with a fake and an autograd formula, so a compiled UViT
keeps it in its graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mcm_fast._checks import check_float_tensor, compute_dtype
from mcm_fast.ops.native import TRITON_ERROR
from mcm_fast.ops.registry import dispatch, needs_grad, register


@register("attention", "sdpa", differentiable=True)
def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch's fused attention; scale 1/sqrt(head_dim), its default."""
    return F.scaled_dot_product_attention(q, k, v)


@register("attention", "reference", differentiable=True)
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in float32 (float64 for float64 inputs), cast back to the input dtype.

    Moves the [B, heads, N, M] score matrix through memory several times: the cost a fused kernel avoids.
    """
    compute = compute_dtype(q)
    scores = q.to(compute) @ k.to(compute).transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]))  # [B, h, N, M]
    return (scores.softmax(dim=-1) @ v.to(compute)).to(q.dtype)  # [B, h, N, d]


def _check_qkv(q, k, v) -> None:
    """q [B, h, N, d], k and v [B, h, M, d]: float tensors of one dtype on one device."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, x, min_dim=4)
        if x.dim() != 4:
            raise ValueError(f"{name}: expected a [B, heads, tokens, head_dim] tensor, got shape {tuple(x.shape)}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} like q, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} like q, got {x.device}")
        if (x.shape[0], x.shape[1], x.shape[3]) != (q.shape[0], q.shape[1], q.shape[3]):
            raise ValueError(f"{name}: expected shape [{q.shape[0]}, {q.shape[1]}, tokens, {q.shape[3]}] "
                             f"(batch, heads and head_dim of q), got {tuple(x.shape)}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"v: expected {k.shape[2]} tokens like k, got shape {tuple(v.shape)}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """o = softmax(q k^T / sqrt(head_dim)) v, non-causal; q [B, heads, N, d], k and v [B, heads, M, d] -> [B, heads, N,
    d].

    The attention of the UViT's transformer blocks; backend as everywhere (None: the fastest that can run).
    """
    _check_qkv(q, k, v)
    impl = dispatch("attention", q.device, needs_grad(q, k, v), backend, args=(q, k, v))
    return impl(q, k, v)


def _fake_forward(q, k, v):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


def _fake_backward(do, q, k, v, o, lse):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save_for_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _triton_supports(q, k, v):
    """Why the Triton kernel cannot take these inputs, or None."""
    from mcm_fast.kernels.attention import HEAD_DIMS

    if q.shape[-1] not in HEAD_DIMS:
        return f"supports head_dim {HEAD_DIMS}, got {q.shape[-1]}"
    return None


if TRITON_ERROR is None:
    from mcm_fast.kernels import attention as kernels

    @torch.library.triton_op("mcm_fast::attention_triton", mutates_args=())
    def attention_triton(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return kernels.attention_forward(q, k, v)

    @torch.library.triton_op("mcm_fast::attention_backward_triton", mutates_args=())
    def attention_backward_triton(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                                  lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return kernels.attention_backward(do, q, k, v, o, lse)

    def _backward(ctx, do, _dlse):
        return attention_backward_triton(do, *ctx.saved_tensors)

    attention_triton.register_fake(_fake_forward)
    attention_backward_triton.register_fake(_fake_backward)
    attention_triton.register_autograd(_backward, setup_context=_save_for_backward)

    @register("attention", "triton", differentiable=True, supports=_triton_supports)
    def attention_flash_triton(q, k, v):
        """Flash attention in Triton (kernels/attention.py)."""
        return attention_triton(q, k, v)[0]
