"""invDDIM inverts DDIM (math.md §2), for any times s < t and per-sample batches."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mcm_fast as mf

SCHEDULES = [mf.CosineSchedule(), mf.CosineSchedule(interpolate=(32, 64, 64))]


@settings(max_examples=60, deadline=None)
@given(t=st.floats(0.02, 1.0), frac=st.floats(0.0, 0.98), seed=st.integers(0, 2**16), which=st.sampled_from([0, 1]))
def test_inv_ddim_of_ddim_is_identity(t, frac, seed, which):
    s = t * frac
    g = torch.Generator().manual_seed(seed)
    x, z_t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).unbind(0)
    sched = SCHEDULES[which]
    z_s = mf.ddim_step(x, z_t, t, s, sched)
    x_back = mf.inv_ddim(z_s, z_t, t, s, sched)
    # conditioning: the inverse divides by alpha_s - alpha_t sigma_s / sigma_t
    a_t, s_t = sched.alpha_sigma(t)
    a_s, s_s = sched.alpha_sigma(s)
    gain = 1 / abs((a_s - a_t * s_s / s_t).item())
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12 * (1 + gain) * 10)


def test_inv_ddim_per_sample_times_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 8, 8, generator=g)
    z_t = torch.randn(4, 2, 8, 8, generator=g)
    t = torch.tensor([1.0, 0.7, 0.5, 0.25])
    s = torch.tensor([0.0, 0.1, 0.45, 0.0])
    sched = mf.CosineSchedule()
    back = mf.inv_ddim(mf.ddim_step(x, z_t, t, s, sched, backend="reference"), z_t, t, s, sched)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)


def test_ddim_is_identity_at_s_equal_t():
    x, z = torch.randn(2, 3, 5, dtype=torch.float64).unbind(0)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    for backend in mf.available_backends("ddim_step"):
        torch.testing.assert_close(mf.ddim_step(x, z, t, t, mf.CosineSchedule(), backend=backend), z)
