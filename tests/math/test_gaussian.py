"""The math core against closed forms for Gaussian data x ~ N(0, c^2 I) (math.md §7).

The exact denoiser, posterior variance and probability-flow map (tests/closed_form.py) are written from
math.md, independently of the package, and checked by Monte Carlo before they judge DDIM, aDDIM, Euler, Heun.
"""
import math

import pytest
import torch

import mcm_fast as mf
from closed_form import C, alpha_sigma, exact_denoiser, exact_flow, marginal_var, posterior_var

SCHED = mf.CosineSchedule()


@pytest.mark.parametrize("t", [0.05, 0.3, 0.6, 0.95])
def test_closed_forms_by_monte_carlo(t):
    """x - E[x|z] has mean 0, is uncorrelated with z and has the posterior variance."""
    g = torch.Generator().manual_seed(1)
    n = 400_000
    x = C * torch.randn(n, generator=g, dtype=torch.float64)
    alpha, sigma = alpha_sigma(t)
    z = alpha * x + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    residual = x - exact_denoiser(z, t)
    tol = 5 * C**2 / math.sqrt(n)
    assert abs(residual.mean().item()) < tol
    assert abs((residual * z).mean().item()) < tol
    assert residual.var().item() == pytest.approx(float(posterior_var(t)), rel=0.02, abs=tol)
    assert z.var().item() == pytest.approx(float(marginal_var(t)), rel=0.01)


def exact_model(z, t):
    t = t if isinstance(t, float) else float(t.flatten()[0])
    return exact_denoiser(z, t)


def integrate(step, n_steps, t_hi, t_lo, z):
    grid = torch.linspace(t_hi, t_lo, n_steps + 1, dtype=torch.float64).tolist()
    for t, s in zip(grid[:-1], grid[1:]):
        z = step(z, t, s)
    return z


STEPS = {
    "ddim": lambda z, t, s: mf.ddim_step(exact_model(z, t), z, t, s, SCHED),
    "addim-0": lambda z, t, s: mf.addim_step(exact_model(z, t), z, t, s, SCHED, 0.0),
    "euler": lambda z, t, s: mf.euler_step(exact_model(z, t), z, t, s, SCHED),
    "heun": lambda z, t, s: mf.heun_step(exact_model, z, t, s, SCHED),
}
ORDER = {"ddim": 1, "addim-0": 1, "euler": 1, "heun": 2}


@pytest.mark.parametrize("name", STEPS)
def test_converges_to_the_exact_flow_at_its_order(name):
    """Relative error to z_t sqrt(v_s / v_t) falls by 2^order as the number of steps doubles."""
    z1 = torch.randn(3, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_hi, t_lo = 0.9, 0.1
    target = exact_flow(z1, t_hi, t_lo)
    errors = [
        ((integrate(STEPS[name], n, t_hi, t_lo, z1) - target).norm() / target.norm()).item()
        for n in (16, 32, 64, 128)
    ]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(r - ORDER[name]) < 0.15 for r in rates), f"{name}: errors {errors}, rates {rates}"


@pytest.mark.parametrize("name", ["ddim", "heun"])
def test_whole_interval_converges(name):
    """From pure noise (t = 1) to data (t = 0), endpoints included: the error goes to zero."""
    z1 = torch.randn(2, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = exact_flow(z1, 1.0, 0.0)
    errors = [((integrate(STEPS[name], n, 1.0, 0.0, z1) - target).norm() / target.norm()).item() for n in (64, 1024)]
    assert errors[1] < errors[0] / 4 and errors[1] < 1e-2, errors


def test_one_addim_step_from_noise_keeps_the_data_variance():
    """From t = 1 with the exact posterior variance aDDIM samples variance c^2; DDIM collapses."""
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(64, 4096, generator=g, dtype=torch.float64)
    x_hat = exact_denoiser(z1, 1.0)
    addim = mf.addim_step(x_hat, z1, 1.0, 0.0, SCHED, posterior_var(1.0))
    ddim = mf.ddim_step(x_hat, z1, 1.0, 0.0, SCHED)
    assert addim.var().item() == pytest.approx(C**2, rel=0.01)
    assert ddim.var().item() < 1e-5 * C**2


@pytest.mark.parametrize("backend", mf.available_backends("addim_step"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_addim_per_sample_variance(backend, dtype):
    """Per-sample x_var [B]: each sample's one-step variance is sigma_s^2 + K^2 x_var, K = alpha_s - alpha_t sigma_s /
    sigma_t."""
    g = torch.Generator().manual_seed(4)
    t, s = 0.8, 0.3
    z = (math.sqrt(marginal_var(t)) * torch.randn(4, 20000, generator=g, dtype=torch.float64)).to(dtype)
    x_var = torch.tensor([0.0, 0.1, 0.2, posterior_var(t)], dtype=dtype)
    out = mf.addim_step(exact_denoiser(z, t), z, t, s, SCHED, x_var, backend=backend).double()
    (a_t, s_t), (a_s, s_s) = alpha_sigma(t), alpha_sigma(s)
    k = a_s - a_t * s_s / s_t
    for b in range(4):
        # z_s = alpha_s x_hat + c eps_hat; x_hat and eps_hat are multiples of z, so this is exact per sample
        mean_part = a_s * a_t * C**2 / marginal_var(t)
        eps_scale = s_t / marginal_var(t)
        norm_sq = (eps_scale * z[b].double()).square().sum().item()
        c = math.sqrt(s_s**2 + z.shape[1] * k**2 * x_var[b].item() / norm_sq)
        expected = (mean_part + c * eps_scale) * z[b].double()
        torch.testing.assert_close(out[b], expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_analytic_x_var_is_a_tenth_of_the_posterior_variance_under_half_unit_prior(t):
    """0.1 / (2 + SNR) = 0.1 c^2 sigma^2 / (alpha^2 c^2 + sigma^2) with c^2 = 0.5 (math.md §3)."""
    alpha, sigma = alpha_sigma(t)
    expected = float(0.1 * 0.5 * sigma**2 / (alpha**2 * 0.5 + sigma**2))
    assert mf.analytic_x_var(SCHED.logsnr(t)).item() == pytest.approx(expected, rel=1e-9)
    x_hat, z = torch.randn(2, 2, 50, dtype=torch.float64).unbind(0)
    s = t / 2
    torch.testing.assert_close(
        mf.addim_step(x_hat, z, t, s, SCHED, "analytic"), mf.addim_step(x_hat, z, t, s, SCHED, expected)
    )
