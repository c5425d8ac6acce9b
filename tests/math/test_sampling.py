"""Algorithm 2, the diffusion samplers, guidance, XVarTable and the metrics against closed forms (math.md §5, §7).

Gaussian data x ~ N(0, c^2 I): the exact denoiser, the exact multistep consistency function f* and the exact
flow z_s = z_t sqrt(v_s / v_t) come from tests/closed_form.py, written from math.md independently of the package.
"""
import math

import pytest
import torch

import mcm_fast as mf
from closed_form import C, alpha_sigma, exact_denoiser, inv_ddim, marginal_var, posterior_var
from closed_form import consistency_function as exact_consistency
from closed_form import per_sample as col
from mcm_fast.metrics import ode_error, sliced_wasserstein

SCHED = mf.CosineSchedule()
SHIFTED = mf.CosineSchedule(shift=(32, 64))


class Model:
    """model(z_t, t, **cond) -> fn(z_t, t) (default: full(call index)); records every call's t and cond."""

    def __init__(self, fn=None, schedule=SCHED):
        self.fn, self.calls = fn, []
        if schedule is not None:
            self.schedule = schedule

    def __call__(self, z, t, **cond):
        self.calls.append((z.clone(), t.clone(), dict(cond)))
        return torch.full_like(z, float(len(self.calls))) if self.fn is None else self.fn(z, t, **cond)

    @property
    def inputs(self):
        return [z for z, _, _ in self.calls]

    @property
    def times(self):
        return [t for _, t, _ in self.calls]


def noise(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def rms(x):
    return x.square().mean().sqrt().item()


# ---- Algorithm 2 ----

@pytest.mark.parametrize("n_steps", [1, 2, 3, 8])
def test_sample_calls_model_once_per_step_at_k_over_s(n_steps):
    model = Model()
    out = mf.sample(model, n_steps, noise=noise(3, 5), generator=torch.Generator().manual_seed(0))
    assert len(model.calls) == n_steps
    for t, k in zip(model.times, range(n_steps, 0, -1)):
        assert torch.equal(t, torch.full((3,), k / n_steps, dtype=torch.float64)), (k, t)
    assert torch.equal(out, torch.full((3, 5), float(n_steps), dtype=torch.float64))  # the last x_hat


@pytest.mark.parametrize("shift", [1.0, 0.5], ids=["cosine", "shifted"])
@pytest.mark.parametrize("n_steps", [1, 2, 4, 8])
def test_exact_consistency_function_follows_the_flow(n_steps, shift):
    """With f*, every DDIM jump lands on the exact flow; the result is f*(z_{1/S}, 1/S), variance c^2.
    The shifted case also checks that model.schedule is used when schedule=None."""
    z1 = noise(64, 1024)
    model = Model(exact_consistency(n_steps, shift), schedule=SHIFTED if shift != 1.0 else SCHED)
    out = mf.sample(model, n_steps, noise=z1)
    t = torch.tensor(1 / n_steps, dtype=torch.float64)
    z_t = z1 * (marginal_var(t, shift) / marginal_var(1.0, shift)).sqrt()
    expected = inv_ddim(z1 * (marginal_var(0.0, shift) / marginal_var(1.0, shift)).sqrt(), z_t, t, 0.0, shift)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    assert out.var().item() == pytest.approx(C**2, rel=0.02)


def test_sample_is_deterministic_given_noise():
    model = Model(exact_consistency(4))
    z1 = noise(4, 32)
    assert torch.equal(mf.sample(model, 4, noise=z1), mf.sample(model, 4, noise=z1))


def test_sample_schedule_argument():
    z1 = noise(4, 32)
    shifted = Model(exact_consistency(2, 0.5), schedule=SHIFTED)
    plain = Model(exact_consistency(2, 0.5), schedule=None)
    assert torch.equal(mf.sample(shifted, 2, noise=z1), mf.sample(plain, 2, noise=z1, schedule=SHIFTED))
    with pytest.raises(TypeError, match="^schedule"):
        mf.sample(plain, 2, noise=z1)


def test_conditioning_reaches_the_model():
    labels = torch.tensor([3, 1, 4])
    model = Model()
    mf.sample(model, 3, shape=(3, 2), label=labels, generator=torch.Generator().manual_seed(0))
    assert [set(c) for _, _, c in model.calls] == [{"label"}] * 3
    assert all(c["label"] is labels for _, _, c in model.calls)


# ---- guidance ----

def labelled(z, t, label):
    """A toy model whose output depends on the label."""
    return 0.5 * z + col(label.to(z.dtype), z) + col(t, z)


@pytest.mark.parametrize("w", [0.0, 1.5, -0.3])
def test_guided_is_the_cfg_combination(w):
    z, t, label = noise(3, 4), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), torch.tensor([1, 2, 3])
    null = torch.full((3,), 10)
    expected = (1 + w) * labelled(z, t, label) - w * labelled(z, t, null)
    torch.testing.assert_close(mf.guided(labelled, w, {"label": 10})(z, t, label=label), expected)


@pytest.mark.parametrize("w", [1.5, -0.3])
def test_sample_with_guidance(w):
    z1, label, null = noise(3, 4), torch.tensor([1, 2, 3]), torch.full((3,), 10)
    one = torch.ones(3, dtype=torch.float64)
    out = mf.sample(labelled, 1, noise=z1, schedule=SCHED, guidance=w, null_cond={"label": 10}, label=label)
    torch.testing.assert_close(out, (1 + w) * labelled(z1, one, label) - w * labelled(z1, one, null))
    model = Model(labelled)
    out = mf.sample(model, 3, noise=z1, guidance=w, null_cond={"label": 10}, label=label)
    assert len(model.calls) == 3  # one batched call per step
    torch.testing.assert_close(out, mf.sample(mf.guided(labelled, w, {"label": 10}), 3, noise=z1, schedule=SCHED,
                                              label=label))


def test_guidance_needs_null_cond():
    with pytest.raises(ValueError, match="^null_cond"):
        mf.sample(labelled, 2, noise=noise(3, 4), schedule=SCHED, guidance=1.0, label=torch.tensor([1, 2, 3]))


# ---- compile and CUDA graph flags ----

class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.schedule = SCHED
        self.lin = torch.nn.Linear(6, 6)

    def forward(self, z, t):
        return self.lin(z) * t.to(z.dtype)[:, None]


def test_compile_matches_eager():
    torch.manual_seed(0)
    net, z1 = TinyNet(), noise(4, 6).float()
    torch.testing.assert_close(mf.sample(net, 2, noise=z1, compile=True), mf.sample(net, 2, noise=z1))


def test_cuda_graph_on_cpu_is_an_error():
    """A forced path that cannot run is an error, never a fallback (as a backend named by argument)."""
    model, z1 = Model(exact_consistency(3)), noise(4, 6)
    with pytest.raises(ValueError, match="^cuda_graph: expected CUDA tensors"):
        mf.sample(model, 3, noise=z1, cuda_graph=True)


# ---- diffusion samplers ----

def gaussian_model():
    return Model(lambda z, t: exact_denoiser(z, t))


@pytest.mark.parametrize("solver, n_steps", [("ddim", 256), ("euler", 256), ("heun", 64)])
def test_diffusion_solvers_follow_the_exact_flow(solver, n_steps):
    z1 = noise(32, 1024)
    model = gaussian_model()
    out = mf.sample_diffusion(model, n_steps, solver, noise=z1)
    assert len(model.calls) == n_steps * (2 if solver == "heun" else 1)
    assert out.var().item() == pytest.approx(C**2, rel=0.03)
    exact = z1 * (marginal_var(0.0) / marginal_var(1.0)).sqrt()
    assert rms(out - exact) / rms(exact) < (5e-3 if solver == "heun" else 0.02)


def test_ancestral_sampling_keeps_the_data_variance():
    out = mf.sample_diffusion(gaussian_model(), 256, "ancestral", noise=noise(32, 1024),
                              generator=torch.Generator().manual_seed(1))
    assert out.var().item() == pytest.approx(C**2, rel=0.03)


def test_one_addim_step_with_a_measured_table_keeps_the_variance():
    """One aDDIM step (math.md §3's formula, which addim_step keeps at s = 0) from noise to data with the
    measured x_var restores the data variance; DDIM collapses."""
    x_data = C * noise(256, 512, seed=2)
    table = mf.XVarTable.measure(gaussian_model(), x_data, SCHED, points=9, generator=torch.Generator().manual_seed(3))
    z1, t1 = noise(64, 2048), torch.ones(64, dtype=torch.float64)
    x_hat = exact_denoiser(z1, 1.0)
    addim = mf.addim_step(x_hat, z1, 1.0, 0.0, SCHED, table(t1))
    ddim = mf.ddim_step(x_hat, z1, 1.0, 0.0, SCHED)
    assert addim.var().item() == pytest.approx(C**2, rel=0.03)
    assert ddim.var().item() < 1e-4 * C**2


@pytest.mark.parametrize("x_var", ["analytic", 0.05, "table"])
def test_addim_sampler_ends_with_a_ddim_step(x_var):
    """The aDDIM sampler's steps put x_var back, except the last, into t = 0, which is DDIM's: the sample is
    alpha_0 x_hat + sigma_0 eps_hat of the last call, with no added variance along eps_hat."""
    if x_var == "table":
        x_var = mf.XVarTable(f64(0.0, 1.0), f64(0.01, 0.2))
    model = Model(lambda z, t: 0.5 * z)
    z1 = noise(4, 64)
    out = mf.sample_diffusion(model, 3, "addim", noise=z1, x_var=x_var)
    (z_last, t_last, _), (a_t, s_t), (a_0, s_0) = model.calls[-1], alpha_sigma(1 / 3), alpha_sigma(0.0)
    torch.testing.assert_close(t_last, torch.full((4,), 1 / 3, dtype=torch.float64))
    x_hat = 0.5 * z_last
    torch.testing.assert_close(out, a_0 * x_hat + s_0 * (z_last - a_t * x_hat) / s_t, rtol=1e-12, atol=1e-12)
    ddim = mf.ddim_step(0.5 * z1, z1, 1.0, 2 / 3, SCHED)  # the first step is aDDIM: more norm than DDIM
    assert (model.calls[1][0].norm(dim=1) > ddim.norm(dim=1) * (1 + 1e-3)).all()


def test_xvar_table_measures_the_posterior_variance():
    x_data = C * noise(256, 512, seed=2)
    table = mf.XVarTable.measure(gaussian_model(), x_data, SCHED, points=9, generator=torch.Generator().manual_seed(3))
    grid = torch.linspace(0, 1, 9, dtype=torch.float64)
    torch.testing.assert_close(table.t, grid)
    torch.testing.assert_close(table.x_var, posterior_var(grid), rtol=0.03, atol=0)
    mid = (grid[1:] + grid[:-1]) / 2
    torch.testing.assert_close(table(mid), (table.x_var[1:] + table.x_var[:-1]) / 2)


def test_xvar_table_interpolates_linearly():
    table = mf.XVarTable(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 3.0]))
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(table(t), torch.tensor([0.0, 0.5, 1.0, 2.0, 2.6, 3.0], dtype=torch.float64))



@pytest.mark.parametrize("t, x_var, name", [
    (f64(0.0, 0.5, 0.5), f64(1, 2, 3), "t"),
    (f64(0.0, 0.7, 0.5), f64(1, 2, 3), "t"),
    (f64(0.0, 0.5, 1.0), f64(1, -2, 3), "x_var"),
    (f64(0.0, 0.5, 1.0), f64(1, math.nan, 3), "x_var"),
    (f64(0.0, 0.5, 1.0), f64(1, 2), "t"),
    (f64(0.0), f64(1), "t"),
], ids=["repeated-t", "decreasing-t", "negative", "nan", "shape", "one-point"])
def test_bad_xvar_tables(t, x_var, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        mf.XVarTable(t, x_var)


# ---- validation ----

Z1 = noise(2, 3)
BAD_SAMPLE = {
    "n_steps-0": (dict(n_steps=0), ValueError, "n_steps"),
    "n_steps-float": (dict(n_steps=1.5), TypeError, "n_steps"),
    "n_steps-bool": (dict(n_steps=True), TypeError, "n_steps"),
    "noise-list": (dict(noise=Z1.tolist()), TypeError, "noise"),
    "noise-int": (dict(noise=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "noise"),
    "shape-mismatch": (dict(shape=(2, 4)), ValueError, "shape"),
    "no-shape": (dict(noise=None), ValueError, "shape"),
}


@pytest.mark.parametrize("kwargs, exc, name", BAD_SAMPLE.values(), ids=BAD_SAMPLE.keys())
def test_sample_validation(kwargs, exc, name):
    with pytest.raises(exc, match=f"^{name}"):
        mf.sample(**{"model": Model(), "n_steps": 2, "noise": Z1, **kwargs})


BAD_DIFFUSION = {
    **BAD_SAMPLE,
    "solver": (dict(solver="rk4"), ValueError, "solver"),
    "x_var-str": (dict(solver="addim", x_var="exact"), ValueError, "x_var"),
    "x_var-bool": (dict(solver="addim", x_var=True), ValueError, "x_var"),
    "x_var-none": (dict(solver="addim", x_var=None), ValueError, "x_var"),
}


@pytest.mark.parametrize("kwargs, exc, name", BAD_DIFFUSION.values(), ids=BAD_DIFFUSION.keys())
def test_sample_diffusion_validation(kwargs, exc, name):
    with pytest.raises(exc, match=f"^{name}"):
        mf.sample_diffusion(**{"model": Model(), "n_steps": 2, "solver": "ddim", "noise": Z1, **kwargs})


# ---- metrics ----

def test_ode_error_of_the_exact_consistency_function():
    z1 = noise(16, 256)
    teacher = lambda z, t: exact_denoiser(z, t)  # noqa: E731
    f_star = exact_consistency(2)
    exact = ode_error(f_star, teacher, z1, 2, teacher_steps=64, teacher_solver="heun", schedule=SCHED)
    perturbed = ode_error(lambda z, t: 1.1 * f_star(z, t), teacher, z1, 2, teacher_steps=64, teacher_solver="heun",
                          schedule=SCHED)
    assert exact < 1e-2
    assert perturbed > 10 * exact and perturbed > 0.05


def exact_w2_1d(a, b):
    """W2 between two 1-D empirical distributions: integrate (F_a^-1(u) - F_b^-1(u))^2 over u, piecewise."""
    a, b = sorted(a), sorted(b)
    cuts = sorted({i / len(a) for i in range(len(a) + 1)} | {j / len(b) for j in range(len(b) + 1)})
    total = 0.0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        mid = (lo + hi) / 2
        total += (hi - lo) * (a[int(mid * len(a))] - b[int(mid * len(b))]) ** 2
    return math.sqrt(total)


def test_sliced_wasserstein_of_identical_sets_is_zero():
    a = noise(100, 3)
    assert sliced_wasserstein(a, a.clone(), 64, torch.Generator().manual_seed(0)) == 0.0


@pytest.mark.parametrize("n, m", [(7, 7), (40, 40), (8, 4), (3, 2), (6, 4), (5, 13)])
def test_sliced_wasserstein_in_1d_is_the_exact_w2(n, m):
    a, b = noise(n, 1, seed=1), 1.5 * noise(m, 1, seed=2) + 0.3
    got = sliced_wasserstein(a, b, 16, torch.Generator().manual_seed(0))
    assert got == pytest.approx(exact_w2_1d(a.flatten().tolist(), b.flatten().tolist()), rel=1e-12)


def test_sliced_wasserstein_between_1d_gaussians():
    m1, s1, m2, s2 = 0.0, 1.0, 0.5, 1.5
    a, b = m1 + s1 * noise(50_000, 1, seed=1), m2 + s2 * noise(50_000, 1, seed=2)
    assert sliced_wasserstein(a, b, 4, torch.Generator().manual_seed(0)) == pytest.approx(
        math.hypot(m1 - m2, s1 - s2), rel=0.02)


def test_sliced_wasserstein_of_a_mean_shift_in_2d():
    """SW_2^2 = E_u[(delta . u)^2] = |delta|^2 / 2 for unit u uniform on the circle."""
    delta = torch.tensor([1.0, -0.6], dtype=torch.float64)
    a, b = noise(5000, 2, seed=1), noise(5000, 2, seed=2) + delta
    got = sliced_wasserstein(a, b, 512, torch.Generator().manual_seed(0))
    assert got == pytest.approx(delta.norm().item() / math.sqrt(2), rel=0.05)


@pytest.mark.parametrize("b", [noise(10, 3), noise(10, 2, 1), noise(10)], ids=["d", "3d", "1d"])
def test_sliced_wasserstein_bad_shapes(b):
    with pytest.raises(ValueError, match="^b"):
        sliced_wasserstein(noise(10, 2), b)
