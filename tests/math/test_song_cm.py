"""Consistency models of Song et al. 2023 in their EDM/VE form (math.md §6) against hand-written formulas.

VE Gaussian data x ~ N(0, c^2 I), x_sigma = x + sigma eps: the exact denoiser D(x, sigma) = c^2 x / (c^2 + sigma^2)
and the exact consistency function f*(x_sigma, sigma) = x_sigma sqrt((c^2 + sigma_min^2) / (c^2 + sigma^2)) are
written here by hand, independently of the package.
"""
import math

import pytest
import torch

import mcm_fast as mf
from closed_form import exact_denoiser
from mcm_fast.consistency import (
    ConsistencyLoss,
    EDMConsistency,
    KarrasGrid,
    VEDenoiser,
    cm_ema_decay,
    cm_sample,
    cm_steps,
)
from mcm_fast.train.ema import ema_update

C = 0.7
SIGMA_MIN = 0.002


def col(sigma, x):
    """sigma (a float or a [B] tensor) broadcast against x [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return sigma.reshape(-1, *[1] * (x.dim() - 1)) if sigma.dim() else sigma


def ve_denoiser(x, sigma):
    return C**2 * x / (C**2 + col(sigma, x) ** 2)


def f_star(x, sigma):
    return x * ((C**2 + SIGMA_MIN**2) / (C**2 + col(sigma, x) ** 2)).sqrt()


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- EDM parameterization ----

def random_net(x, c_noise):
    weight = randn(x.shape[1], x.shape[1], seed=9, dtype=x.dtype)
    return 100 * torch.tanh(x @ weight) + c_noise[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "batch"])
def test_edm_boundary_is_the_identity(dtype, as_tensor):
    x = randn(5, 7, dtype=dtype)
    sigma = torch.full((5,), SIGMA_MIN, dtype=torch.float64) if as_tensor else SIGMA_MIN
    out = EDMConsistency(random_net, sigma_min=SIGMA_MIN)(x, sigma)
    assert out.dtype == dtype and torch.equal(out, x)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_edm_scalings(sigma):
    """f = c_skip x + c_out net(c_in x, log(sigma) / 4) with the hand-written c_skip, c_out, c_in."""
    sd, seen = 0.5, []
    x = randn(4, 3)

    def const_net(x_in, c_noise):
        seen.append((x_in, c_noise))
        return torch.full_like(x_in, 2.0)

    out = EDMConsistency(const_net, SIGMA_MIN, sd)(x, torch.full((4,), sigma, dtype=torch.float64))
    c_skip = sd**2 / ((sigma - SIGMA_MIN) ** 2 + sd**2)
    c_out = (sigma - SIGMA_MIN) * sd / math.sqrt(sigma**2 + sd**2)
    torch.testing.assert_close(out, c_skip * x + c_out * 2.0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(seen[0][0], x / math.sqrt(sigma**2 + sd**2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(seen[0][1], torch.full((4,), math.log(sigma) / 4, dtype=torch.float64))


# ---- schedules of Song et al. ----

def test_cm_steps_and_ema_decay_by_hand():
    k_total = 1000
    assert cm_steps(0, k_total) == 2
    assert cm_steps(k_total, k_total) == 151
    assert cm_steps(k_total // 2, k_total) == math.ceil(math.sqrt(0.5 * (151**2 - 4) + 4) - 1) + 1
    assert cm_ema_decay(0, k_total) == pytest.approx(0.95, rel=1e-14)
    assert cm_ema_decay(k_total, k_total) == pytest.approx(math.exp(2 * math.log(0.95) / 151), rel=1e-14)
    steps = [cm_steps(k, k_total) for k in range(0, k_total + 1, 50)]
    assert steps == sorted(steps)


@pytest.mark.parametrize("n", [2, 5, 18])
def test_karras_sigmas(n):
    grid = KarrasGrid(SIGMA_MIN, 80.0, 7.0)
    sigmas = grid.sigmas(n)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (n,)
    assert sigmas[0].item() == pytest.approx(SIGMA_MIN, rel=1e-12)
    assert sigmas[-1].item() == pytest.approx(80.0, rel=1e-12)
    assert bool((sigmas[1:] > sigmas[:-1]).all())
    i = n // 2
    lo, hi = SIGMA_MIN ** (1 / 7), 80.0 ** (1 / 7)
    assert sigmas[i].item() == pytest.approx((lo + i / (n - 1) * (hi - lo)) ** 7, rel=1e-12)


@pytest.mark.parametrize("n", [1, 0, 2.5, True], ids=str)
def test_karras_bad_n(n):
    with pytest.raises((ValueError, TypeError), match="^n:"):
        KarrasGrid().sigmas(n)


@pytest.mark.parametrize("kwargs, name", [
    (dict(sigma_min=0.0), "sigma_min"),
    (dict(sigma_min=100.0), "sigma_min"),
    (dict(sigma_max=math.inf), "sigma_min"),
    (dict(rho=0.0), "rho"),
    (dict(rho=math.nan), "rho"),
], ids=["min-0", "min-above-max", "max-inf", "rho-0", "rho-nan"])
def test_karras_bad_grid(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        KarrasGrid(**kwargs)


# ---- EMA ----

def bn_net(seed):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    net[1].running_mean.normal_()
    net[1].num_batches_tracked.fill_(seed)
    return net


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.999, 1.0])
def test_ema_update(decay):
    target, online = bn_net(1), bn_net(2)
    expected = [decay * p.detach() + (1 - decay) * q.detach() for p, q in zip(target.parameters(), online.parameters())]
    ema_update(target, online, decay)
    for p, e in zip(target.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
    for b, ob in zip(target.buffers(), online.buffers()):
        assert torch.equal(b, ob)


@pytest.mark.parametrize("decay", [-0.1, 1.5, math.nan], ids=str)
def test_ema_bad_decay(decay):
    with pytest.raises(ValueError, match="^decay"):
        ema_update(bn_net(1), bn_net(2), decay)


# ---- consistency distillation and training ----

X_DATA = C * randn(256, 64, seed=1)


def cm_loss(kind="cd", online=f_star, target=f_star, teacher=ve_denoiser, seed=0, step=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return ConsistencyLoss(kind, **kwargs)(online, target, X_DATA, step=step, teacher=teacher,
                                           generator=generator).item()


@pytest.mark.parametrize("solver, fall", [("heun", 40), ("euler", 10)])
def test_cd_loss_of_the_exact_consistency_function_vanishes_with_refinement(solver, fall):
    """The loss is the teacher step's local error: h^3 for Heun, h^2 for Euler, as N = 10, 40, 160."""
    losses = [cm_loss(solver=solver, steps=n) for n in (10, 40, 160)]
    perturbed = cm_loss(solver=solver, steps=40, online=lambda x, s: 1.05 * f_star(x, s))
    assert losses[0] > fall * losses[1] > fall**2 * losses[2], losses
    assert losses[1] < 0.05 * perturbed, (losses, perturbed)


def test_ct_loss_with_the_schedule_uses_the_karras_grid_of_n_k():
    seen = []

    def online(x, sigma):
        seen.append(sigma)
        return f_star(x, sigma)

    k, k_total = 300, 1000
    assert math.isfinite(cm_loss("ct", online=online, teacher=None, step=k, steps=None, total_steps=k_total))
    n = cm_steps(k, k_total)
    lo, hi = SIGMA_MIN ** (1 / 7), 80.0 ** (1 / 7)
    grid = torch.tensor([(lo + i / (n - 1) * (hi - lo)) ** 7 for i in range(1, n)], dtype=torch.float64)
    assert bool(torch.isclose(seen[0][:, None], grid[None], rtol=1e-12).any(1).all())


def test_ct_loss_is_finite_with_a_fixed_n():
    assert math.isfinite(cm_loss("ct", teacher=None, steps=18))


@pytest.mark.parametrize("kind, teacher", [("ct", ve_denoiser), ("cd", None)])
def test_teacher_exactly_for_cd(kind, teacher):
    with pytest.raises(ValueError, match="^teacher"):
        cm_loss(kind, teacher=teacher, steps=18)


@pytest.mark.parametrize("distance", ["l2", "l2_squared", "pseudo_huber"])
def test_distances_by_hand(distance):
    """online = 0.01 and target = 0 everywhere: every per-sample distance is the same known number."""
    d, diff = X_DATA.shape[1], 0.01
    got = cm_loss("ct", online=lambda x, s: torch.full_like(x, diff), target=lambda x, s: torch.zeros_like(x),
                  teacher=None, steps=18, distance=distance)
    c = 0.00054 * math.sqrt(d)
    expected = {"l2": diff * math.sqrt(d), "l2_squared": diff**2 * d,
                "pseudo_huber": math.sqrt(diff**2 * d + c**2) - c}[distance]
    assert got == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("kwargs, name", [
    (dict(kind="sd"), "kind"),
    (dict(solver="rk4"), "solver"),
    (dict(distance="l1"), "distance"),
    (dict(steps=1), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(steps=True), "steps"),
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=1.5), "total_steps"),
    (dict(huber_c=0.0), "huber_c"),
    (dict(huber_c=-1.0), "huber_c"),
    (dict(huber_c=math.inf), "huber_c"),
], ids=lambda v: repr(v) if isinstance(v, dict) else v)
def test_consistency_loss_bad_options(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        ConsistencyLoss(**kwargs)


# ---- VE view of a VP model, and the logSNR inverse ----

def hand_logsnr(t, shift=None, interpolate=None):
    """-2 log tan(pi u / 2) on the [-15, 15] clip, + 2 log(r / res), or interpolated between two shifts."""
    t_min = math.atan(math.exp(-7.5)) * 2 / math.pi
    lam = -2 * torch.log(torch.tan(math.pi * (t_min + t * (1 - 2 * t_min)) / 2))
    if shift is not None:
        return lam + 2 * math.log(shift[0] / shift[1])
    if interpolate is not None:
        r_lo, r_hi, res = interpolate
        return t * (lam + 2 * math.log(r_lo / res)) + (1 - t) * (lam + 2 * math.log(r_hi / res))
    return lam


def test_ve_view_of_the_exact_exact_denoiser_is_the_exact_ve_denoiser():
    sigma = torch.logspace(math.log10(0.01), math.log10(50), 9, dtype=torch.float64)
    x = randn(9, 32) * (C**2 + sigma[:, None] ** 2).sqrt()
    out = VEDenoiser(exact_denoiser, mf.CosineSchedule())(x, sigma)
    torch.testing.assert_close(out, ve_denoiser(x, sigma), rtol=1e-9, atol=1e-12)


SCHEDULES = {
    "plain": {},
    "shifted": dict(shift=(32, 64)),
    "interpolated": dict(interpolate=(32, 64, 64)),
}


@pytest.mark.parametrize("kwargs", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_t_of_logsnr_inverts_logsnr(kwargs):
    t = torch.cat([torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                   torch.tensor([0.0, 1e-9, 0.5, 1 - 1e-9, 1.0], dtype=torch.float64)])
    got = mf.CosineSchedule(**kwargs).t_of_logsnr(hand_logsnr(t, **kwargs))
    torch.testing.assert_close(got, t, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_t_of_logsnr_outside_the_range(kwargs):
    schedule = mf.CosineSchedule(**kwargs)
    ends = hand_logsnr(torch.tensor([1.0, 0.0], dtype=torch.float64), **kwargs)
    for lam in (ends[0] - 0.01, ends[1] + 0.01):
        with pytest.raises(ValueError, match="^logsnr"):
            schedule.t_of_logsnr(lam.reshape(1))


# ---- multistep sampling of Song et al. ----

@pytest.mark.parametrize("sigmas", [[80.0], [80.0, 0.5], [80.0, 2.0, 0.5, 0.1]], ids=len)
def test_cm_sample_with_the_exact_consistency_function(sigmas):
    calls = []
    model = lambda x, sigma: calls.append(sigma) or f_star(x, sigma)  # noqa: E731
    out = cm_sample(model, sigmas, randn(32, 1024), SIGMA_MIN, generator=torch.Generator().manual_seed(1))
    assert calls == sigmas
    assert out.var().item() == pytest.approx(C**2 + SIGMA_MIN**2, rel=0.03)


@pytest.mark.parametrize("sigmas", [[], [0.5, 80.0], [80.0, 80.0], [80.0, 0.001]], ids=str)
def test_cm_sample_bad_sigmas(sigmas):
    with pytest.raises(ValueError, match="^sigmas"):
        cm_sample(f_star, sigmas, randn(2, 3), SIGMA_MIN)
