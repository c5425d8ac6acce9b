"""mcm_fast: Multistep Consistency Models (Heek, Hoogeboom & Salimans 2024) in PyTorch, with fused kernels."""
from mcm_fast.denoiser import Denoiser
from mcm_fast.ops import available_backends
from mcm_fast.schedules import CosineSchedule
from mcm_fast.solvers import addim_step, analytic_x_var, ddim_step, euler_step, heun_step, inv_ddim

__version__ = "0.1.0"

__all__ = [
    "CosineSchedule",
    "Denoiser",
    "addim_step",
    "analytic_x_var",
    "available_backends",
    "ddim_step",
    "euler_step",
    "heun_step",
    "inv_ddim",
]
