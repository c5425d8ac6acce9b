"""2-D toy data for training: points in memory read like images (PointData), drawn from the Gaussian mixtures
of toy.py."""
from __future__ import annotations

import torch

from mcm_fast._checks import check_int, describe
from mcm_fast.data.toy import GaussianMixture

MAX_POINTS = 10**8  # points drawn for a 2-D toy (1.6 GB in float64)
TOYS = {"ring": GaussianMixture.ring, "grid": GaussianMixture.grid}


class PointData:
    """Points in memory, float32 [N, d], unlabeled: the 2-D toys, read like ImageData."""

    num_classes = 0

    def __init__(self, points: torch.Tensor):
        if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.dtype != torch.float32:
            raise TypeError(f"points: expected a float32 tensor [N, d], got {describe(points)}")
        self.points = points

    def __len__(self) -> int:
        return len(self.points)

    @property
    def shape(self) -> tuple[int]:
        """(d,) of one point."""
        return tuple(self.points.shape[1:])

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"x": float32 [b, d]} for a LongTensor [b]."""
        return {"x": self.points[indices]}


def load_toy(name: str, n: int, seed: int = 0) -> PointData:
    """n points of the 2-D toy "ring" (8 Gaussians on a circle) or "grid" (5x5 Gaussians), float32 [n, 2].

    Drawn once with a generator seeded by `seed`: the same seed gives the same points.
    """
    if name not in TOYS:
        raise ValueError(f"name: expected one of {', '.join(TOYS)}, got {name!r}")
    check_int("n", n, 1, MAX_POINTS)
    check_int("seed", seed, -2**63, 2**64 - 1)  # what torch.Generator.manual_seed takes
    points = TOYS[name]().sample(n, torch.Generator().manual_seed(seed))
    return PointData(points.float())
