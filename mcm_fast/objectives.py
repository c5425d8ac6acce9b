"""Training objectives: the diffusion (v-) loss of the teacher (math.md §1)."""
from __future__ import annotations

import torch

from mcm_fast._checks import batch_view, check_float_tensor
from mcm_fast.denoiser import Denoiser
from mcm_fast.schedules import alpha_sigma


def diffusion_loss(denoiser: Denoiser, x: torch.Tensor, generator: torch.Generator | None = None, **cond) -> torch.Tensor:
    """v-loss: mean over the batch of w(t) ||x_hat - x||^2, w(t) = SNR(t) + 1, t ~ U(0, 1) (math.md §1).

    With w = 1 / sigma_t^2 this is ||v_hat - v||^2 for any parameterization of the network.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser: expected a Denoiser, got {type(denoiser).__name__}")
    check_float_tensor("x", x)
    t = torch.rand(x.shape[0], generator=generator, device=x.device)  # [B]
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    logsnr = denoiser.schedule.logsnr(t)
    alpha_t, sigma_t = (batch_view(v, x) for v in alpha_sigma(logsnr))
    z_t = (alpha_t * x + sigma_t * eps).to(x.dtype)  # math.md §1
    x_hat = denoiser(z_t, t, **cond)
    weight = torch.exp(logsnr) + 1  # SNR + 1
    return (weight * (x_hat.float() - x.float()).flatten(1).square().sum(1)).mean()
