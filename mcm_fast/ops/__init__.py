"""Fused ops and the registry that picks their backend: cuda | triton | cpu | sdpa | reference.

The reference backends register themselves beside their formulas (mcm_fast.solvers, mcm_fast.losses,
mcm_fast.ops.attention); the compiled ones (C++/CUDA extension and Triton) in mcm_fast.ops.ddim and
mcm_fast.ops.mcm. The package's __init__ imports them all.
"""
from mcm_fast.ops.registry import BACKENDS, available_backends, dispatch

__all__ = ["BACKENDS", "available_backends", "dispatch"]
