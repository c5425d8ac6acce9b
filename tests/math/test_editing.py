"""Zero-shot editing (inpainting, super-resolution, SDEdit, interpolation) against hand-written constraints.

The Gaussian closed forms (x ~ N(0, c^2 I): E[x | z_t] = alpha_t c^2 z / v_t) and the cosine schedule come
from tests/closed_form.py, written from math.md independently of the package.
"""
import math

import pytest
import torch

import mcm_fast as mf
from closed_form import C, alpha_sigma, exact_denoiser, logsnr_edges
from mcm_fast.editing import downsample, inpaint, interpolate, sdedit, slerp, super_resolve

SCHED = mf.CosineSchedule()


class Model:
    """Records the times of its calls; per sample x_hat = fn(z, t) with t the [B] float64 time."""

    def __init__(self, fn):
        self.fn, self.schedule, self.times = fn, SCHED, []

    def __call__(self, z, t, **cond):
        assert t.dtype == torch.float64 and t.shape == (z.shape[0],) and bool((t == t[0]).all())
        self.times.append(t[0].item())
        return self.fn(z, t[0].item())


def conv_model():
    """A small fixed random conv: x_hat mixes neighbouring pixels, so unknown pixels see the known ones."""
    weight = 0.3 * torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return Model(lambda z, t: torch.nn.functional.conv2d(z, weight, padding=1) + t)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def block_mean(x, f):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // f, f, w // f, f).mean((3, 5))


# ---- inpainting ----

X_KNOWN = randn(2, 3, 8, 8, seed=1)
MASK = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.5).double()


@pytest.mark.parametrize("n_steps", [1, 3])
def test_inpaint_keeps_known_pixels_exactly(n_steps):
    model = conv_model()
    out = inpaint(model, X_KNOWN, MASK, n_steps, noise=randn(2, 3, 8, 8))
    assert len(model.times) == n_steps
    known = MASK.expand_as(X_KNOWN).bool()
    assert torch.equal(out[known], X_KNOWN[known])
    assert bool((out[~known] != X_KNOWN[~known]).all())


def test_inpaint_without_known_pixels_is_plain_sampling():
    model, z1 = conv_model(), randn(2, 3, 8, 8)
    out = inpaint(model, X_KNOWN, torch.zeros(1), 3, noise=z1)
    torch.testing.assert_close(out, mf.sample(model, 3, noise=z1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mask", [torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64), torch.ones(2, 3, 7, 8)],
                         ids=["half", "shape"])
def test_inpaint_bad_mask(mask):
    with pytest.raises(ValueError, match="^mask"):
        inpaint(conv_model(), X_KNOWN, mask, 2)


# ---- super-resolution ----

@pytest.mark.parametrize("factor", [2, 3])
def test_super_resolve_matches_the_low_resolution_image(factor):
    x_low, model = randn(2, 3, 4, 4, seed=3), conv_model()
    out = super_resolve(model, x_low, factor, 2, noise=randn(2, 3, 4 * factor, 4 * factor))
    assert out.shape == (2, 3, 4 * factor, 4 * factor)
    assert len(model.times) == 2
    torch.testing.assert_close(block_mean(out, factor), x_low, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(downsample(out, factor), block_mean(out, factor), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, x_low.repeat_interleave(factor, -2).repeat_interleave(factor, -1))


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m, x: inpaint(m, x, torch.ones(1), 2), id="inpaint"),
    pytest.param(lambda m, x: super_resolve(m, x, 2, 2), id="super_resolve"),
    pytest.param(lambda m, x: sdedit(m, x, 0.5, 2), id="sdedit"),
])
def test_edits_of_float64_images_without_noise(edit):
    out = edit(Model(lambda z, t: 0.5 * z), randn(1, 3, 4, 4))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("x_low, factor, error, name", [
    (randn(1, 3, 4, 4), 0, ValueError, "factor"),
    (randn(1, 3, 4, 4), 1.5, TypeError, "factor"),
    (randn(1, 3, 4, 4), True, TypeError, "factor"),
    (randn(3, 4, 4), 2, ValueError, "x_low"),
], ids=["factor-0", "factor-float", "factor-bool", "x_low-3d"])
def test_super_resolve_validation(x_low, factor, error, name):
    with pytest.raises(error, match=f"^{name}"):
        super_resolve(conv_model(), x_low, factor, 2)


# ---- SDEdit ----

@pytest.mark.parametrize("t_start, n_steps, times", [
    (0.5, 4, [0.5, 0.25]),
    (0.6, 4, [0.6, 0.5, 0.25]),
    (1.0, 4, [1.0, 0.75, 0.5, 0.25]),
    (0.02, 4, [0.02]),
], ids=["on-grid", "off-grid", "full", "small"])
def test_sdedit_times(t_start, n_steps, times):
    model = Model(lambda z, t: z)
    sdedit(model, randn(2, 5), t_start, n_steps, noise=randn(2, 5, seed=1))
    assert model.times == pytest.approx(times, abs=1e-15)


EDITS = {
    "inpaint": lambda model, **kw: inpaint(model, randn(2, 3, 4, 4), torch.ones(4, 4, dtype=torch.float64), 4, **kw),
    "super_resolve": lambda model, **kw: super_resolve(model, randn(2, 3, 2, 2), 2, 4, **kw),
    "sdedit": lambda model, **kw: sdedit(model, randn(2, 3, 4, 4), 1.0, 4, **kw),
    "interpolate": lambda model, noise, **kw: interpolate(model, randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1), 0.5, 4,
                                                          **kw),
}


@pytest.mark.parametrize("edit", EDITS)
def test_edits_jump_through_the_models_segment_edges(edit):
    """A student trained with boundaries="logsnr" is called at its logSNR-uniform segment edges, not at k / S."""
    model = Model(lambda z, t: z)
    EDITS[edit](model, boundaries="logsnr", noise=randn(2, 3, 4, 4, seed=2))
    assert model.times == pytest.approx(logsnr_edges(4).flip(0)[:-1].tolist(), abs=1e-12)
    with pytest.raises(ValueError, match="^boundaries: "):
        EDITS[edit](Model(lambda z, t: z), boundaries="sigma", noise=randn(2, 3, 4, 4, seed=2))


def test_sdedit_noises_the_guide_to_t_start():
    inputs = []
    model = Model(lambda z, t: inputs.append(z) or z)
    guide, eps = randn(2, 5), randn(2, 5, seed=1)
    sdedit(model, guide, 0.6, 4, noise=eps)
    alpha, sigma = alpha_sigma(0.6)
    torch.testing.assert_close(inputs[0], alpha * guide + sigma * eps, rtol=1e-12, atol=1e-12)


def test_sdedit_from_a_small_time_stays_close_to_the_guide():
    guide, eps = C * randn(4, 256), randn(4, 256, seed=1)
    out = sdedit(Model(exact_denoiser), guide, 0.02, 4, noise=eps)
    alpha, sigma = alpha_sigma(0.02)
    torch.testing.assert_close(out, exact_denoiser(alpha * guide + sigma * eps, 0.02), rtol=1e-12, atol=1e-12)
    assert (out - guide).norm() < 0.1 * guide.norm()


@pytest.mark.parametrize("t_start", [0, 0.0, 1.5, -0.1, math.nan, True], ids=str)
def test_sdedit_bad_t_start(t_start):
    with pytest.raises(ValueError, match="^t_start"):
        sdedit(Model(exact_denoiser), randn(2, 5), t_start, 4)


# ---- slerp and interpolation ----

A, B = randn(3, 2, 5, seed=1), randn(3, 2, 5, seed=2)


def angle(u, v):
    u, v = u.flatten(1), v.flatten(1)
    return torch.arccos((u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)))


def test_slerp_endpoints():
    torch.testing.assert_close(slerp(A, B, 0), A, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(slerp(A, B, 1), B, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("weight", [0.1, 0.5, 0.8])
def test_slerp_turns_by_weight_times_the_angle(weight):
    b = B * (A.flatten(1).norm(dim=1) / B.flatten(1).norm(dim=1))[:, None, None]  # |a| = |b| per sample
    out = slerp(A, b, weight)
    torch.testing.assert_close(angle(out, A), weight * angle(A, b), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(angle(out, b), (1 - weight) * angle(A, b), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.flatten(1).norm(dim=1), A.flatten(1).norm(dim=1), rtol=1e-12, atol=0)


def test_slerp_of_parallel_inputs_is_the_straight_line():
    out = slerp(A, 2 * A, 0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 1.25 * A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, True, "0.5"], ids=str)
def test_slerp_bad_weight(weight):
    with pytest.raises(ValueError, match="^weight"):
        slerp(A, B, weight)


def test_interpolate_samples_from_the_slerp():
    model = Model(lambda z, t: exact_denoiser(z, t) + 0.1 * torch.sin(z))
    a, b = randn(4, 16, seed=1), randn(4, 16, seed=2)
    out = interpolate(model, a, b, 0.3, 3)
    assert len(model.times) == 3
    torch.testing.assert_close(out, mf.sample(model, 3, noise=slerp(a, b, 0.3)), rtol=0, atol=0)
