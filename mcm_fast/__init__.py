"""mcm_fast: Multistep Consistency Models (Heek, Hoogeboom & Salimans 2024) in PyTorch, with fused kernels."""
from mcm_fast.denoiser import Denoiser
from mcm_fast.guidance import guided
from mcm_fast.objectives import MCMObjective, diffusion_loss
from mcm_fast.ops import available_backends
from mcm_fast.ops.attention import attention
from mcm_fast.ops.mcm_loss import mcm_loss, mcm_target, mcm_target_loss
from mcm_fast.ops.steps import addim_step, ddim_step, euler_step, heun_step, inv_ddim
from mcm_fast.pretrained import load_pretrained, pretrained_models
from mcm_fast.sampling import sample, sample_diffusion
from mcm_fast.schedules import CosineSchedule, DiscreteSchedule, EDMSchedule, FlowSchedule, Schedule
from mcm_fast.solvers import analytic_x_var
from mcm_fast.train.checkpoint import load_checkpoint, save_checkpoint
from mcm_fast.x_var import XVarTable

__version__ = "0.1.0"

__all__ = [
    "CosineSchedule",
    "Denoiser",
    "DiscreteSchedule",
    "EDMSchedule",
    "FlowSchedule",
    "MCMObjective",
    "Schedule",
    "XVarTable",
    "addim_step",
    "analytic_x_var",
    "attention",
    "available_backends",
    "ddim_step",
    "diffusion_loss",
    "euler_step",
    "guided",
    "heun_step",
    "inv_ddim",
    "load_checkpoint",
    "load_pretrained",
    "mcm_loss",
    "mcm_target",
    "mcm_target_loss",
    "pretrained_models",
    "sample",
    "sample_diffusion",
    "save_checkpoint",
]
