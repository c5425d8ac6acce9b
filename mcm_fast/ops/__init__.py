"""The public checked ops and the registry that picks their backend: cuda | triton | cpu | sdpa | reference.

Imports run one way: callers (sampling, objectives, train) -> ops -> the math modules (solvers, losses,
schedules, denoiser), which hold formulas only. steps.py and losses.py hold the public functions: they check
arguments once, turn times into logSNRs and dispatch; their *_unchecked entry points serve inner loops.
ddim.py, mcm.py and attention.py register every backend of each op (the reference formulas, the C++/CUDA
extension and Triton) with its fake and autograd; registry.py is the table and the choice.
"""
from mcm_fast.ops.registry import BACKENDS, available_backends, dispatch

__all__ = ["BACKENDS", "available_backends", "dispatch"]
