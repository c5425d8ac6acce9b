"""Frechet distance between two sets of features: ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).

Computed in float64 through symmetric eigendecompositions, so it stays finite and accurate for the
near-singular covariances of few samples in many dimensions (sqrtm of a non-symmetric product, as in the
usual FID code, can return complex values there).
"""
from __future__ import annotations

import torch

from mcm_fast._checks import check_float_tensor


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], unbiased covariance [d, d]) of features [n, d], in float64."""
    _check_features("features", features)
    f = features.double()
    mean = f.mean(0)
    centred = f - mean
    return mean, centred.T @ centred / (f.shape[0] - 1)


def _check_features(name: str, features) -> None:
    """features must be finite floats [n, d] with n >= 2 (a covariance needs two points)."""
    check_float_tensor(name, features, min_dim=2)
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"{name}: expected [n, d] with n >= 2, got shape {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric PSD matrix; eigenvalues below 0 by rounding count as 0."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_from_statistics(mean_a, cov_a, mean_b, cov_b) -> float:
    """The Frechet distance between N(mean_a, cov_a) and N(mean_b, cov_b)."""
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (*mean_a.shape, *mean_a.shape):
        raise ValueError(f"cov_b: expected statistics of equal dimension, got means {tuple(mean_a.shape)}, "
                         f"{tuple(mean_b.shape)} and covariances {tuple(cov_a.shape)}, {tuple(cov_b.shape)}")
    mean_a, cov_a, mean_b, cov_b = (v.double() for v in (mean_a, cov_a, mean_b, cov_b))
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    value = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(value.clamp(min=0))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """The Frechet distance between the Gaussians fitted to two feature sets [n, d] and [m, d]."""
    _check_features("features_a", features_a)
    _check_features("features_b", features_b)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_b: expected {features_a.shape[1]} features like features_a, got shape "
                         f"{tuple(features_b.shape)}")
    return frechet_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b))
