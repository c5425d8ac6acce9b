"""Schedules beyond the cosine (discrete VP, rectified flow, EDM) against hand-computed values, and networks
trained on them, wrapped by Denoiser, against the package's exact VP denoiser of a Gaussian mixture."""
import math

import pytest
import torch

import mcm_fast as mf
from mcm_fast.data.toy import GaussianMixture

BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's linear betas
ALPHAS_CUMPROD = torch.cumprod(1 - BETAS, 0)
SCHEDULES = {
    "flow": mf.FlowSchedule(),
    "flow-shift3": mf.FlowSchedule(shift=3.0, time_scale=1000.0),  # SD3's
    "edm": mf.EDMSchedule(),
    "discrete": mf.DiscreteSchedule(ALPHAS_CUMPROD),
    "discrete-cosine": mf.DiscreteSchedule(torch.cos((torch.arange(1, 101) / 100 + 0.008) / 1.008 * math.pi / 2) ** 2
                                           / math.cos(0.008 / 1.008 * math.pi / 2) ** 2 * 0.999),
}
MIXTURE = GaussianMixture(torch.tensor([[-1.0, 0.5, 0.0], [0.8, -0.3, 1.2], [0.1, 1.5, -0.7]]),
                          torch.tensor([0.3, 0.15, 0.5]), torch.tensor([0.5, 0.2, 0.3]))


def hand_logsnr(name, t):
    """lambda(t) from each schedule's own definition, in Python floats."""
    if name == "flow":
        u_min, u_max = 1 / (1 + math.exp(7.5)), 1 / (1 + math.exp(-7.5))
        u = u_min + t * (u_max - u_min)
        return 2 * math.log((1 - u) / u)
    if name == "flow-shift3":  # u = 3 v / (1 + 2 v), v uniform in t between the v of u's ends
        ends = [u / (3 - 2 * u) for u in (1 / (1 + math.exp(7.5)), 1 / (1 + math.exp(-7.5)))]
        v = ends[0] + t * (ends[1] - ends[0])
        u = 3 * v / (1 + 2 * v)
        return 2 * math.log((1 - u) / u)
    if name == "edm":
        sigma = (0.002 ** (1 / 7) + t * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
        return -2 * math.log(sigma)
    alpha_bar = SCHEDULES[name].alphas_cumprod[round(t * (len(SCHEDULES[name].alphas_cumprod) - 1))]
    return math.log(alpha_bar / (1 - alpha_bar))


@pytest.mark.parametrize("name", SCHEDULES)
def test_logsnr_by_hand_and_inverse(name):
    sched = SCHEDULES[name]
    steps = len(sched.alphas_cumprod) - 1 if name.startswith("discrete") else 8
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    lam = sched.logsnr(t)
    torch.testing.assert_close(lam, torch.tensor([hand_logsnr(name, v) for v in t.tolist()], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    assert bool(torch.isfinite(lam).all()) and bool((lam[1:] < lam[:-1]).all())
    fine = torch.rand(257, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sched.t_of_logsnr(sched.logsnr(fine)), fine, rtol=0, atol=1e-10)


def test_discrete_logsnr_is_linear_between_timesteps():
    sched = SCHEDULES["discrete"]
    lam = sched.logsnr(torch.tensor([10.25 / 999, 10 / 999, 11 / 999], dtype=torch.float64))
    torch.testing.assert_close(lam[0], 0.75 * lam[1] + 0.25 * lam[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["flow", "edm", "discrete"])
def test_grids_span_zero_to_one(name):
    sched = SCHEDULES[name]
    for grid in ("t", "logsnr", "edm"):
        edges = sched.segment_edges(16, grid)
        assert edges[0].item() == 0.0 and edges[-1].item() == 1.0 and bool((edges[1:] > edges[:-1]).all())
    # EDM's schedule is uniform in sigma^(1/7) already: its edm grid is uniform in t
    torch.testing.assert_close(SCHEDULES["edm"].segment_edges(16, "edm"), SCHEDULES["edm"].segment_edges(16, "t"),
                               rtol=0, atol=1e-12)


def mixture_mean(z, a, b):
    """E[x | z] for z = a x + b eps (any a, b > 0, [n] each), the mixture's posterior mean written out here:
    z | k ~ N(a mu_k, (a^2 s_k^2 + b^2) I) and E[x | z, k] = mu_k + a s_k^2 (z - a mu_k) / (a^2 s_k^2 + b^2)."""
    a, b = a[:, None, None], b[:, None, None]  # [n, 1, 1]
    var = a**2 * MIXTURE.stds[None, :, None] ** 2 + b**2  # [n, K, 1]
    diff = z[:, None, :] - a * MIXTURE.means[None]  # [n, K, d]
    log_r = MIXTURE.weights.log() - 1.5 * var[..., 0].log() - diff.square().sum(2) / (2 * var[..., 0])
    mean_k = MIXTURE.means[None] + a * MIXTURE.stds[None, :, None] ** 2 * diff / var
    return (torch.softmax(log_r, 1)[..., None] * mean_k).sum(1)


def flow_velocity(z, u):
    """The exact velocity E[eps - x | z] on z = (1 - u) x + u eps: (z - E[x | z]) / u."""
    return (z - mixture_mean(z, 1 - u, u)) / u[:, None]


def edm_denoiser(z, sigma):
    """EDM's exact D(z, sigma) = E[x | z] on z = x + sigma eps."""
    return mixture_mean(z, torch.ones_like(sigma), sigma)


def discrete_output(prediction):
    """The exact eps or v of a DDPM network net(z, timestep) on the linear-beta schedule (integer timesteps)."""
    def net(z, tau):
        alpha_bar = ALPHAS_CUMPROD[tau.round().long()]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x = mixture_mean(z, alpha, sigma)
        eps = (z - alpha[:, None] * x) / sigma[:, None]
        return eps if prediction == "eps" else alpha[:, None] * eps - sigma[:, None] * x
    return net


WRAPPED = {
    "flow-velocity": (flow_velocity, "flow", "flow"),
    "edm-D": (edm_denoiser, "edm", "x"),
    "discrete-eps": (discrete_output("eps"), "discrete", "eps"),
    "discrete-v": (discrete_output("v"), "discrete", "v"),
}


@pytest.mark.parametrize("case", WRAPPED)
def test_wrapped_exact_networks_equal_the_exact_vp_denoiser(case):
    """Each exact network, wrapped (input scaling, native time, its prediction), is E[x | z_t] at the same logSNR."""
    net, name, prediction = WRAPPED[case]
    sched = SCHEDULES[name]
    model = mf.Denoiser(net, sched, prediction=prediction, time_input="native")
    t = torch.arange(1, 999, 37, dtype=torch.float64) / 999  # whole timesteps of the discrete schedule
    z_t = 1.3 * torch.randn(len(t), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    alpha, sigma = mf.schedules.alpha_sigma(sched.logsnr(t))
    expected, _ = MIXTURE.posterior(z_t, alpha, sigma)
    torch.testing.assert_close(model(z_t, t), expected, rtol=1e-10, atol=1e-10)


def test_v_prediction_needs_a_variance_preserving_schedule():
    with pytest.raises(ValueError, match="prediction: 'v' needs a variance-preserving"):
        mf.Denoiser(lambda z, t: z, mf.FlowSchedule(), prediction="v")


@pytest.mark.parametrize("kwargs, match", [
    ({"alphas_cumprod": [0.9]}, "alphas_cumprod: expected a 1-D sequence"),
    ({"alphas_cumprod": [0.9, 1.0]}, r"alphas_cumprod: expected values in \(0, 1\)"),
    ({"alphas_cumprod": [0.5, 0.9]}, "alphas_cumprod: expected strictly decreasing"),
])
def test_discrete_schedule_rejects_bad_tables(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mf.DiscreteSchedule(**kwargs)


@pytest.mark.parametrize("cls, kwargs, match", [
    (mf.EDMSchedule, {"sigma_min": 0.0}, "sigma_min: expected a finite number > 0"),
    (mf.EDMSchedule, {"sigma_min": 90.0}, "sigma_min: expected less than sigma_max"),
    (mf.EDMSchedule, {"rho": "7"}, "rho: expected a number"),
    (mf.FlowSchedule, {"logsnr_min": 3.0, "logsnr_max": 2.0}, "logsnr_min: expected less than"),
])
def test_schedules_reject_bad_arguments(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["flow", "edm", "discrete"])
def test_algorithms_run_unchanged_on_any_schedule(name):
    """Algorithm 1 and the samplers take the schedule from the wrapped model: finite losses and samples."""
    sched = SCHEDULES[name]
    net, prediction = {"flow": (flow_velocity, "flow"), "edm": (edm_denoiser, "x"),
                       "discrete": (discrete_output("eps"), "eps")}[name]
    teacher = mf.Denoiser(lambda z, time: net(z.double(), time.double()).to(z.dtype), sched, prediction, "native")
    x = MIXTURE.sample(16, torch.Generator().manual_seed(2)).float()
    loss = mf.MCMObjective(sched, student_steps=2, teacher_steps=8)(teacher, x, teacher=teacher)
    assert math.isfinite(loss.item())
    z = mf.sample_diffusion(teacher, 8, "heun", shape=(16, 3), generator=torch.Generator().manual_seed(3))
    assert bool(torch.isfinite(z).all()) and mf.sample(teacher, 2, shape=(4, 3)).shape == (4, 3)
