"""Fused ops and the registry that picks their backend: cuda | triton | cpu | sdpa | reference.

The update ops' reference backend registers itself in mcm_fast.solvers, the compiled ones in
mcm_fast.ops.native; attention's sdpa and reference backends in mcm_fast.ops.attention. The package's
__init__ imports all three.
"""
from mcm_fast.ops.registry import BACKENDS, available_backends, dispatch

__all__ = ["BACKENDS", "available_backends", "dispatch"]
