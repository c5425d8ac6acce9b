"""The time embedding every network shares: Fourier features of the logSNR."""
from __future__ import annotations

import math

import torch
from torch import nn


class FourierEmbedding(nn.Module):
    """[sin, cos](2 pi f_k lambda / 30) for fixed log-spaced frequencies: smooth in the logSNR over [-15, 15]."""

    def __init__(self, features: int = 32):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(64), features // 2)), persistent=False)

    def forward(self, logsnr: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * logsnr[:, None].float() / 30 * self.freqs  # [B, F/2]
        return torch.cat([angle.sin(), angle.cos()], dim=1)
