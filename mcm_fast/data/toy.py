"""Gaussian mixtures: toy data whose denoiser E[x | z_t] and posterior variance are known in closed form.

x ~ sum_k w_k N(mu_k, s_k^2 I_d). Given z_t = alpha x + sigma eps, component k has
z_t | k ~ N(alpha mu_k, v_k I) with v_k = alpha^2 s_k^2 + sigma^2, and x | z_t, k is Gaussian with mean
m_k = mu_k + alpha s_k^2 (z_t - alpha mu_k) / v_k and per-dimension variance s_k^2 sigma^2 / v_k.
"""
from __future__ import annotations

import math

import torch

from mcm_fast._checks import check_float_tensor


class GaussianMixture:
    """A mixture of isotropic Gaussians in d dimensions (float64), with exact sampling and posteriors."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor | None = None):
        check_float_tensor("means", means, min_dim=2)
        k = means.shape[0]
        if means.dim() != 2:
            raise ValueError(f"means: expected shape [K, d], got {tuple(means.shape)}")
        if stds.shape != (k,) or not bool((stds > 0).all()):
            raise ValueError(f"stds: expected {k} positive values, got {stds}")
        weights = torch.full((k,), 1.0 / k) if weights is None else weights
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights: expected {k} positive values, got {weights}")
        self.means = means.double()
        self.stds = stds.double()
        self.weights = weights.double() / weights.sum()

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixture:
        """`modes` equal Gaussians on a circle in 2-D: the usual multimodal toy distribution."""
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        return cls(means, torch.full((modes,), float(std), dtype=torch.float64))

    @classmethod
    def grid(cls, side: int = 5, spacing: float = 0.5, std: float = 0.05) -> GaussianMixture:
        """side x side equal Gaussians on a square grid centred on 0 in 2-D: many modes close together."""
        axis = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
        means = torch.cartesian_prod(axis, axis)  # [side^2, 2]
        return cls(means, torch.full((side * side,), float(std), dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples, [n, d] float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[k] + self.stds[k, None] * noise

    def variance(self) -> float:
        """The per-dimension variance of the data, tr Cov[x] / d."""
        mean = self.weights @ self.means
        second = self.weights @ (self.means.square().sum(1) + self.dim * self.stds**2)
        return float((second - mean.square().sum()) / self.dim)

    def posterior(self, z_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """(E[x | z_t], tr Var[x | z_t] / d) for z_t [n, d] and alpha, sigma floats or [n] tensors."""
        z = z_t.double()
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)  # [n or 1, 1, 1]
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
        var_k = alpha.square() * self.stds.square()[None, :, None] + sigma.square()  # [n, K, 1]
        diff = z[:, None, :] - alpha * self.means[None]  # [n, K, d]
        log_r = self.weights.log() - 0.5 * self.dim * var_k[..., 0].log() - diff.square().sum(2) / (2 * var_k[..., 0])
        r = torch.softmax(log_r, dim=1)[..., None]  # [n, K, 1]
        m = self.means[None] + alpha * self.stds.square()[None, :, None] * diff / var_k  # [n, K, d]
        tau = self.stds.square()[None, :, None] * sigma.square() / var_k  # [n, K, 1]
        x_hat = (r * m).sum(1)
        spread = (m - x_hat[:, None]).square().sum(2)  # law of total variance, no cancellation
        return x_hat, (r[..., 0] * (self.dim * tau[..., 0] + spread)).sum(1) / self.dim
