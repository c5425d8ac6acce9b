"""The teacher samplers' time grids: Heun's order on its default grid (EDM's), the accuracy of ode_error's
reference solve, and explicit grids."""
import math

import pytest
import torch

import mcm_fast as mf
from mcm_fast.data.toy import GaussianMixture
from mcm_fast.metrics import ode_error

SCHED = mf.CosineSchedule()
MIXTURE = GaussianMixture.ring()


def teacher(z, t):
    """The exact denoiser of the 8-mode ring: curved probability-flow paths, known to float64 precision."""
    alpha, sigma = mf.schedules.alpha_sigma(SCHED.logsnr(t))
    return MIXTURE.posterior(z, alpha, sigma)[0].to(z.dtype)


teacher.schedule = SCHED
NOISE = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def converged():
    """The probability-flow solution from NOISE, 8192 Heun steps (about 1e-7 from the limit)."""
    return mf.sample_diffusion(teacher, 8192, "heun", noise=NOISE)


def rms(a, b):
    return float((a - b).square().mean().sqrt())


def test_heun_is_second_order_on_its_default_grid(converged):
    errors = [rms(mf.sample_diffusion(teacher, n, "heun", noise=NOISE), converged) for n in (64, 128, 256, 512)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert min(orders) > 1.75 and orders[-1] > 1.9, orders


def test_ode_error_reference_is_far_below_the_errors_it_measures(converged):
    """ode_error of a one-call 'student' that returns the converged solve is the reference's own error: at least
    10x below the error of a student as good as 16 DDIM steps of the teacher."""
    def as_student(x):
        return lambda z, t: x

    reference_error = ode_error(as_student(converged), teacher, NOISE, 1, schedule=SCHED)
    best_student = mf.sample_diffusion(teacher, 16, "ddim", noise=NOISE)
    student_error = ode_error(as_student(best_student), teacher, NOISE, 1, schedule=SCHED)
    assert 10 * reference_error < student_error, (reference_error, student_error)


def test_heun_defaults_to_the_edm_grid_and_others_to_uniform_t():
    heun = mf.sample_diffusion(teacher, 8, "heun", noise=NOISE)
    assert torch.equal(heun, mf.sample_diffusion(teacher, 8, "heun", noise=NOISE, grid="edm"))
    ddim = mf.sample_diffusion(teacher, 8, "ddim", noise=NOISE)
    uniform = [k / 8 for k in range(8, -1, -1)]
    assert torch.equal(ddim, mf.sample_diffusion(teacher, 8, "ddim", noise=NOISE, grid=uniform))


def test_edm_grid_is_uniform_in_sigma_to_the_one_over_rho():
    edges = SCHED.segment_edges(10, "edm")
    root = torch.exp(-SCHED.logsnr(edges) / 14)  # sigma^(1/7), sigma = exp(-lambda / 2)
    gaps = root[1:] - root[:-1]
    torch.testing.assert_close(gaps, torch.full_like(gaps, gaps.mean().item()), rtol=1e-9, atol=0)


@pytest.mark.parametrize("grid, error, match", [
    ("karras", ValueError, "grid: expected one of"),
    ([1.0, 0.5], ValueError, r"grid: expected n_steps \+ 1 = 3"),
    ([1.0, 0.5, 0.6], ValueError, "grid: expected n_steps"),
    ([1.5, 0.5, 0.0], ValueError, "grid: expected n_steps"),
    (3, TypeError, "grid: expected one of"),
])
def test_bad_grids_name_the_argument(grid, error, match):
    with pytest.raises(error, match=match):
        mf.sample_diffusion(teacher, 2, "ddim", noise=NOISE, grid=grid)
