"""CosineSchedule against hand-computed values and its invariants (math.md §1)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mcm_fast as mf

SCHEDULES = {
    "cosine": mf.CosineSchedule(),
    "shifted": mf.CosineSchedule(shift=(32, 64)),
    "interpolated": mf.CosineSchedule(interpolate=(32, 64, 64)),
    "narrow": mf.CosineSchedule(logsnr_min=-5.0, logsnr_max=8.0),
}


def cosine_by_hand(t, lo=-15.0, hi=15.0):
    """-2 log tan(pi u / 2) with u on [t_min, t_max], in Python floats."""
    t_min = math.atan(math.exp(-hi / 2)) * 2 / math.pi
    t_max = math.atan(math.exp(-lo / 2)) * 2 / math.pi
    return -2 * math.log(math.tan(math.pi * (t_min + t * (t_max - t_min)) / 2))


def test_endpoints_hit_the_clip_values():
    sched = mf.CosineSchedule()
    assert sched.logsnr(0.0).item() == pytest.approx(15.0, abs=1e-12)
    assert sched.logsnr(1.0).item() == pytest.approx(-15.0, abs=1e-12)
    assert sched.logsnr(0.5).item() == pytest.approx(0.0, abs=1e-12)  # tan(pi / 4) = 1


@pytest.mark.parametrize("t", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_against_hand_computed_values(t):
    assert mf.CosineSchedule().logsnr(t).item() == pytest.approx(cosine_by_hand(t), rel=1e-12, abs=1e-12)
    shifted = cosine_by_hand(t) + 2 * math.log(32 / 64)
    assert mf.CosineSchedule(shift=(32, 64)).logsnr(t).item() == pytest.approx(shifted, rel=1e-12, abs=1e-12)
    # interpolated 32 -> 64 at res 64: t * (cos + 2 log(1/2)) + (1 - t) * (cos + 0)
    interp = cosine_by_hand(t) + t * 2 * math.log(0.5)
    assert mf.CosineSchedule(interpolate=(32, 64, 64)).logsnr(t).item() == pytest.approx(interp, rel=1e-12, abs=1e-12)
    narrow = cosine_by_hand(t, -5.0, 8.0)
    assert SCHEDULES["narrow"].logsnr(t).item() == pytest.approx(narrow, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_segment_edges(name, n):
    """Uniform in t: exactly k / n. Uniform in logSNR: exact ends, equal logSNR gaps, by the schedule's own
    logsnr (the inverse is checked against hand-computed values for the plain cosine)."""
    sched = SCHEDULES[name]
    assert sched.segment_edges(n).tolist() == [k / n for k in range(n + 1)]
    edges = sched.segment_edges(n, "logsnr")
    assert edges[0].item() == 0.0 and edges[-1].item() == 1.0 and bool((edges[1:] > edges[:-1]).all())
    lam = sched.logsnr(edges)
    gaps = lam[:-1] - lam[1:]
    torch.testing.assert_close(gaps, torch.full_like(gaps, (lam[0] - lam[-1]).item() / n), rtol=1e-9, atol=1e-9)
    if name == "cosine":
        for k, t in enumerate(edges.tolist()):
            assert cosine_by_hand(t) == pytest.approx(15.0 - 30.0 * k / n, abs=1e-9)


@pytest.mark.parametrize("kwargs,error", [(dict(n=0), ValueError), (dict(n=2.0), TypeError),
                                          (dict(n=2, spacing="snr"), ValueError)])
def test_segment_edges_validation(kwargs, error):
    name = next(iter(kwargs if "spacing" not in kwargs else ["spacing"]))
    with pytest.raises(error, match=f"^{name}: "):
        mf.CosineSchedule().segment_edges(**kwargs)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_monotone_and_normalized_on_the_closed_interval(name, dtype):
    sched = SCHEDULES[name]
    t = torch.linspace(0, 1, 10001, dtype=dtype)
    lam = sched.logsnr(t)
    alpha, sigma = sched.alpha_sigma(t)
    assert lam.dtype == dtype and alpha.dtype == dtype
    for v in (lam, alpha, sigma):
        assert torch.isfinite(v).all()
    assert (lam[1:] < lam[:-1]).all(), "logsnr must fall strictly with t"
    assert (alpha > 0).all() and (sigma > 0).all()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), atol=4 * eps, rtol=0)
    # alpha^2 / sigma^2 = exp(lambda), checked in float64 from the float64 logsnr
    lam64 = sched.logsnr(t.double())
    a64, s64 = sched.alpha_sigma(t.double())
    torch.testing.assert_close((a64**2 / s64**2).log(), lam64, atol=1e-9, rtol=1e-9)


def test_sigma_accurate_at_the_clean_end_in_float32():
    """sigma comes through sigmoid: at lambda = 15, sqrt(1 - alpha^2) in float32 would give 0."""
    _, sigma = mf.CosineSchedule().alpha_sigma(torch.tensor([0.0]))
    assert sigma.item() == pytest.approx(math.sqrt(1 / (1 + math.exp(15))), rel=1e-5)


def test_low_precision_times_compute_in_float32():
    lam = mf.CosineSchedule().logsnr(torch.tensor([0.3], dtype=torch.bfloat16))
    assert lam.dtype == torch.float32


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1))
def test_monotone_for_any_pair(a, b):
    sched = mf.CosineSchedule(shift=(16, 64))
    lo, hi = min(a, b), max(a, b)
    if hi - lo > 1e-9:
        assert sched.logsnr(lo).item() > sched.logsnr(hi).item()
