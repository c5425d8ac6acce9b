"""Improved precision and recall (Kynkaenniemi et al. 2019): each set's manifold is the union of balls
around its points, each ball reaching the point's k-th nearest neighbour in the same set.

Precision: the fraction of generated samples inside the real manifold (are samples realistic?). Recall: the
fraction of real samples inside the generated manifold (is the data covered?). Distances in float64, in
chunks, so n = 10,000 fits in memory.
"""
from __future__ import annotations

import torch

from mcm_fast._checks import check_float_tensor, check_int

CHUNK = 1024


def _radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """The distance from each point to its k-th nearest neighbour among the others, [n]."""
    return torch.cat([torch.cdist(chunk, points).kthvalue(k + 1, dim=1).values for chunk in points.split(CHUNK)])


def _covered(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each query lies within radii[i] of some points[i], [m] bool."""
    return torch.cat([(torch.cdist(chunk, points) <= radii).any(dim=1) for chunk in queries.split(CHUNK)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """{"precision", "recall"} of generated features fake [m, d] against real features [n, d]."""
    check_int("k", k, 1)
    for name, x in (("real", real), ("fake", fake)):
        check_float_tensor(name, x, min_dim=2)
        if x.dim() != 2 or x.shape[0] <= k:
            raise ValueError(f"{name}: expected [n, d] features with n > k = {k}, got shape {tuple(x.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"fake: expected {real.shape[1]} features like real, got shape {tuple(fake.shape)}")
    real, fake = real.double(), fake.double()
    precision = _covered(fake, real, _radii(real, k)).double().mean()
    recall = _covered(real, fake, _radii(fake, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall)}
