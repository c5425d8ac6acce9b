"""Fused ops and the registry that picks their backend: cuda | triton | cpu | reference.

The reference backend registers itself in mcm_fast.solvers, the compiled ones in mcm_fast.ops.native; the
package's __init__ imports both.
"""
from mcm_fast.ops.registry import BACKENDS, available_backends, dispatch

__all__ = ["BACKENDS", "available_backends", "dispatch"]
