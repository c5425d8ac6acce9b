"""Frechet distance against closed forms, sample grids, and simple diffusion's multiscale loss."""
import numpy as np
import pytest
import torch
from PIL import Image

from mcm_fast.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_from_statistics,
)
from mcm_fast.metrics.grid import save_grid, tile
from mcm_fast.objectives import check_multiscale, squared_error


def test_frechet_matches_the_closed_form_for_two_gaussians():
    # diagonal covariances commute: FD = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    expected = (m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    assert frechet_from_statistics(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(float(expected), rel=1e-10)
    # a rotated pair: FD is invariant under a common orthogonal change of basis
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    rotated = frechet_from_statistics(q @ m1, q @ torch.diag(a) @ q.T, q @ m2, q @ torch.diag(b) @ q.T)
    assert rotated == pytest.approx(float(expected), rel=1e-8)


def test_frechet_of_samples_converges_to_the_population_value_and_is_zero_for_itself():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * 2 + 1  # N(1, 4 I)
    assert frechet_distance(x, y) == pytest.approx(3 * 1 + 3 * (2 - 1) ** 2, rel=0.02)
    assert frechet_distance(x[:50], x[:50]) == pytest.approx(0.0, abs=1e-9)


def test_frechet_is_finite_for_singular_covariances():
    g = torch.Generator().manual_seed(2)
    few = torch.randn(10, 64, generator=g)  # rank 9 covariance in 64 dims
    value = frechet_distance(few, torch.randn(12, 64, generator=g))
    assert np.isfinite(value) and value > 0
    mean, cov = feature_statistics(few)
    assert mean.dtype == torch.float64 and cov.shape == (64, 64)
    with pytest.raises(ValueError, match="features"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))


def test_grid_tiles_images_in_rows_and_writes_a_png(tmp_path):
    images = torch.linspace(-1, 1, 6).reshape(6, 1, 1, 1).expand(6, 1, 2, 3)
    array = tile(images, nrow=3)
    assert array.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert array[1, 1, 0] == 0 and array[1 + 3, 1 + 8, 0] == 255  # first image black, last white
    path = save_grid(images, tmp_path / "g" / "grid.png", nrow=3, scale=2)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (14, 26) and not list(tmp_path.glob("g/.*tmp"))
    with pytest.raises(ValueError, match="images"):
        tile(torch.zeros(2, 2, 4, 4))


def test_multiscale_loss_counts_each_scale_per_pixel():
    constant = torch.full((2, 1, 8, 8), 0.5)
    assert torch.allclose(squared_error(constant, torch.zeros_like(constant), 2), squared_error(constant, 0 * constant))
    checker = (torch.arange(8)[:, None] + torch.arange(8)).remainder(2).float().mul(2).sub(1).expand(1, 1, 8, 8)
    # the 2x2 means of a checkerboard vanish: only the full-resolution term is left, averaged over 2 scales
    assert squared_error(checker, torch.zeros_like(checker), 1).item() == pytest.approx(64 / 2)
    with pytest.raises(ValueError, match="multiscale"):
        check_multiscale(3, torch.zeros(1, 1, 12, 12))
    with pytest.raises(ValueError, match="multiscale"):
        check_multiscale(-1)
