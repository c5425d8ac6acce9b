"""Fused ops and the registry that picks their backend: cuda | triton | cpu | reference."""
from mcm_fast import solvers  # noqa: F401  (registers the reference backend)
from mcm_fast.ops import native  # noqa: F401  (registers the compiled backends, when built)
from mcm_fast.ops.registry import BACKENDS, available_backends, dispatch

__all__ = ["BACKENDS", "available_backends", "dispatch"]
