"""Sliced Wasserstein distance between two sample sets."""
from __future__ import annotations

import torch

from mcm_fast._checks import check_float_tensor, check_generator, check_int

MAX_PROJECTIONS = 2**16


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, generator=None) -> float:
    """SW_2 between the empirical distributions of a [n, d] and b [m, d]: the root mean over random unit
    directions of the squared 1-D Wasserstein-2 distance, integrated exactly over the quantile levels."""
    check_float_tensor("a", a, min_dim=2)
    check_float_tensor("b", b, min_dim=2)
    check_int("projections", projections, 1, MAX_PROJECTIONS)
    check_generator("generator", generator)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"b: expected [m, {a.shape[-1]}] points like a [n, d], got {tuple(b.shape)} and "
                         f"{tuple(a.shape)}")
    directions = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    directions = (directions / directions.norm(dim=0, keepdim=True)).to(a.device)
    pa = (a.double() @ directions).sort(dim=0).values  # [n, P]
    pb = (b.double() @ directions).sort(dim=0).values  # [m, P]
    # the quantile functions are constant between the levels i / n and j / m: integrate exactly
    n, m = len(pa), len(pb)
    levels = [torch.arange(1, k + 1, dtype=torch.float64) / k for k in (n, m)]
    ends = torch.cat(levels).unique()  # sorted
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    mids = ((starts + ends) / 2).to(a.device)
    gap = pa[(mids * n).long()] - pb[(mids * m).long()]  # [intervals, P]
    return float(((ends - starts).to(a.device)[:, None] * gap.square()).sum(0).mean().sqrt())
