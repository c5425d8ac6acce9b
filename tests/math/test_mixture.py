"""GaussianMixture's closed-form posterior against numerical integration, and the DDIM/aDDIM experiment on it."""
import pytest
import torch

from experiments import ddim_vs_addim_2d as demo
from mcm_fast.data.toy import GaussianMixture


def quadrature_posterior(mixture, z, alpha, sigma):
    """E[x | z] and Var[x | z] in 1-D by summing p(x) N(z; alpha x, sigma^2) on a fine grid."""
    x = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    prior = sum(
        w * torch.exp(-((x - m) ** 2) / (2 * s**2)) / s
        for w, m, s in zip(mixture.weights, mixture.means[:, 0], mixture.stds)
    )
    density = prior * torch.exp(-((z - alpha * x) ** 2) / (2 * sigma**2))
    density = density / density.sum()
    mean = (density * x).sum()
    return mean.item(), (density * (x - mean) ** 2).sum().item()


@pytest.mark.parametrize("z", [-1.3, 0.0, 0.4, 2.2])
@pytest.mark.parametrize("alpha", [0.2, 0.7, 0.98])
def test_posterior_matches_quadrature_in_1d(z, alpha):
    mixture = GaussianMixture(
        torch.tensor([[-1.0], [0.5], [2.0]]), torch.tensor([0.3, 0.2, 0.5]), torch.tensor([0.5, 0.2, 0.3])
    )
    sigma = (1 - alpha**2) ** 0.5
    x_hat, x_var = mixture.posterior(torch.tensor([[z]]), alpha, sigma)
    mean, var = quadrature_posterior(mixture, z, alpha, sigma)
    assert x_hat.item() == pytest.approx(mean, abs=1e-7)
    assert x_var.item() == pytest.approx(var, rel=1e-5, abs=1e-9)


def test_posterior_of_one_component_is_the_gaussian_formula():
    """K = 1, mean mu: E[x|z] = mu + alpha s^2 (z - alpha mu) / v, Var = s^2 sigma^2 / v per dimension."""
    mu, s, alpha, sigma = torch.tensor([[0.3, -1.0, 2.0]]), 0.6, 0.8, 0.6
    z = torch.randn(7, 3, dtype=torch.float64)
    x_hat, x_var = GaussianMixture(mu, torch.tensor([s])).posterior(z, alpha, sigma)
    v = alpha**2 * s**2 + sigma**2
    torch.testing.assert_close(x_hat, mu.double() + alpha * s**2 * (z - alpha * mu.double()) / v)
    torch.testing.assert_close(x_var, torch.full((7,), s**2 * sigma**2 / v, dtype=torch.float64))


def test_sample_and_variance_agree():
    mixture = GaussianMixture.ring(modes=8, radius=1.0, std=0.05)
    x = mixture.sample(200_000, torch.Generator().manual_seed(0))
    assert x.shape == (200_000, 2)
    assert x.var(0).mean().item() == pytest.approx(mixture.variance(), rel=0.01)
    assert mixture.variance() == pytest.approx(0.5 + 0.05**2, rel=1e-9)


def test_demo_shows_ddim_losing_variance_that_addim_keeps():
    rows = {r["steps"]: r for r in demo.run(steps=(1, 16, 256), n=4000, seed=0)}
    assert rows[1]["ddim"][0] < 0.05  # one DDIM step from noise lands on the mean
    assert rows[1]["addim-posterior"][0] > 0.5
    assert rows[256]["ddim"][0] == pytest.approx(1.0, abs=0.05)  # many steps: the exact ODE


def test_experiment_runs_and_rejects_bad_steps(capsys):
    assert demo.main(["--steps", "2,4", "--n", "500"]) == 0
    assert "addim-analytic" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        demo.main(["--steps", "two"])
    assert "--steps" in capsys.readouterr().err
