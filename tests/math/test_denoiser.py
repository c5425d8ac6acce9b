"""Parameterizations, the Denoiser and the v-loss against the definitions of z_t and v (math.md §1)."""
import math

import pytest
import torch

import mcm_fast as mf
from mcm_fast.objectives import diffusion_loss

SCHED = mf.CosineSchedule(shift=(16, 32))


def noisy_batch(seed=0, shape=(5, 2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    lam = torch.tensor([hand_logsnr(v) for v in t.tolist()], dtype=torch.float64)
    alpha = torch.sigmoid(lam).sqrt().reshape(-1, 1, 1, 1)
    sigma = torch.sigmoid(-lam).sqrt().reshape(-1, 1, 1, 1)
    return x, eps, t, lam, alpha, sigma, alpha * x + sigma * eps


def hand_logsnr(t):
    t_min = math.atan(math.exp(-7.5)) * 2 / math.pi
    return -2 * math.log(math.tan(math.pi * (t_min + t * (1 - 2 * t_min)) / 2)) + 2 * math.log(16 / 32)


@pytest.mark.parametrize("prediction", ["x", "eps", "v"])
def test_denoiser_recovers_x_from_the_true_target(prediction):
    x, eps, t, lam, alpha, sigma, z = noisy_batch()
    target = {"x": x, "eps": eps, "v": alpha * eps - sigma * x}[prediction]
    seen = {}

    def net(z_in, logsnr, label=None):
        seen["logsnr"], seen["label"] = logsnr, label
        return target

    den = mf.Denoiser(net, SCHED, prediction=prediction)
    torch.testing.assert_close(den(z, t, label=3), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(seen["logsnr"], lam, rtol=1e-12, atol=1e-12)
    assert seen["label"] == 3 and den.schedule is SCHED


def test_denoiser_time_input_t_and_eps_hat():
    x, eps, t, lam, alpha, sigma, z = noisy_batch(1)
    seen = {}

    def net(z_in, time):
        seen["t"] = time
        return x

    x_hat = mf.Denoiser(net, SCHED, prediction="x", time_input="t")(z, t)
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(mf.denoiser.eps_hat(x_hat, z, alpha, sigma), eps, rtol=1e-9, atol=1e-9)


def test_denoiser_feeds_float32_to_a_float32_network():
    den = mf.Denoiser(lambda z, lam: torch.zeros_like(z) + lam.reshape(-1, 1), SCHED, prediction="x")
    out = den(torch.zeros(2, 3), 0.5)
    assert out.dtype == torch.float32
    assert out[0, 0].item() == pytest.approx(hand_logsnr(0.5), rel=1e-6)


def test_v_loss_is_the_squared_v_error():
    """A v-network that is off by delta has loss ||delta||^2 per sample at every t (w = SNR + 1 = 1/sigma^2)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    delta = torch.randn_like(x)

    def net(z, logsnr):
        alpha = torch.sigmoid(logsnr).sqrt().reshape(-1, 1, 1, 1)
        sigma = torch.sigmoid(-logsnr).sqrt().reshape(-1, 1, 1, 1)
        return (alpha * z - x) / sigma + delta  # true v = (alpha z - x) / sigma, plus an error

    loss = diffusion_loss(mf.Denoiser(net, SCHED), x, generator=torch.Generator().manual_seed(0))
    expected = delta.flatten(1).square().sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_v_loss_backpropagates():
    net = torch.nn.Conv2d(2, 2, 1)
    loss = diffusion_loss(mf.Denoiser(lambda z, lam: net(z), SCHED), torch.randn(3, 2, 4, 4))
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
