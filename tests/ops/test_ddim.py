"""Parity of the fused DDIM / aDDIM backends with the reference (math.md §2-3), op registration, dispatch."""
import pytest
import torch

import mcm_fast as mf
from mcm_fast.ops import dispatch
from mcm_fast.ops.native import NATIVE_ERROR
from mcm_fast.solvers import addim_step_reference, ddim_step_reference
from parity import DTYPES, VIEWS, assert_parity, backend_device, kernel_params, max_abs, randn, shape_id

SCHED = mf.CosineSchedule()
KERNELS = kernel_params("ddim_step")
needs_native = pytest.mark.skipif(NATIVE_ERROR is not None, reason=f"mcm_fast._C is not built: {NATIVE_ERROR}")
SHAPES = [(3, 1, 5, 7), (2, 3, 17), (1, 4, 9, 9), (7, 1000), (2, 3, 70000), (5, 0)]  # 70000: > one 32768 tile


@pytest.fixture(params=KERNELS)
def kernel(request):
    """(backend, device) of each fused backend present."""
    return request.param


def step(op, x_hat, z_t, t, s, x_var, backend):
    if op == "ddim":
        return mf.ddim_step(x_hat, z_t, t, s, SCHED, backend=backend)
    return mf.addim_step(x_hat, z_t, t, s, SCHED, x_var, backend=backend)


def check_parity(op, backend, device, shape, dtype, t, s, x_var, g):
    x_hat, z_t = randn(shape, dtype, g, device), randn(shape, dtype, g, device)
    out = step(op, x_hat, z_t, t, s, x_var, backend)
    ref = step(op, x_hat, z_t, t, s, x_var, "reference")
    truth = step(op, x_hat.double(), z_t.double(), t, s, x_var, "reference")
    assert_parity(f"{op}_step z_s", out, ref, truth, x_hat.double(), z_t.double())
    assert torch.isfinite(out).all(), f"{op}_step z_s: not finite"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("op", ["ddim", "addim"])
def test_parity_per_sample(op, shape, dtype, kernel, gen):
    backend, device = kernel
    B = shape[0]
    t = torch.rand(B, generator=gen, dtype=torch.float64).to(device)
    s = t * torch.rand(B, generator=gen, dtype=torch.float64).to(device)
    x_var = (0.05 + 0.5 * torch.rand(B, generator=gen, dtype=torch.float64)).to(device)  # > 0: the norm matters
    check_parity(op, backend, device, shape, dtype, t, s, x_var, gen)


TIMES = {  # (t, s, x_var) as floats, 0-d tensors and the extremes
    "floats": lambda dev: (0.7, 0.2, 0.3),
    "0d-f32": lambda dev: (torch.tensor(0.6, device=dev), torch.tensor(0.1, device=dev), torch.tensor(0.2, device=dev)),
    "t1-s0": lambda dev: (1.0, 0.0, 0.3),
    "t0-s0": lambda dev: (0.0, 0.0, 0.3),
    "analytic": lambda dev: (0.9, 0.4, "analytic"),
}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("times", TIMES.keys())
@pytest.mark.parametrize("op", ["ddim", "addim"])
def test_parity_scalar_times(op, times, dtype, kernel, gen):
    backend, device = kernel
    check_parity(op, backend, device, (3, 1, 5, 7), dtype, *TIMES[times](device), gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("view", VIEWS.keys())
@pytest.mark.parametrize("op", ["ddim", "addim"])
def test_non_contiguous(op, view, dtype, kernel, gen):
    backend, device = kernel
    B = 3
    x_hat, z_t = (VIEWS[view](B, lambda shape: randn(shape, dtype, gen, device)) for _ in range(2))
    assert not x_hat.is_contiguous()
    t, s = torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.0], dtype=torch.float64)
    x_var = torch.tensor([0.1, 0.0, 0.4], dtype=torch.float64)
    t, s, x_var = t.to(device), s.to(device), x_var.to(device)
    want = step(op, x_hat.contiguous(), z_t.contiguous(), t, s, x_var, backend)
    for name, z in (("z_t non-contiguous", z_t), ("z_t contiguous", z_t.contiguous())):
        out = step(op, x_hat, z, t, s, x_var, backend)
        assert out.shape == x_hat.shape, f"{op}_step z_s ({name}): shape {tuple(out.shape)}"
        assert torch.equal(out, want), f"{op}_step z_s ({name}): differs from the result on contiguous copies"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("backend_device", kernel_params("addim_step", reference=True))
def test_addim_with_zero_x_var_is_ddim(backend_device, dtype, gen):
    backend, device = backend_device
    x_hat, z_t = randn((4, 2, 33), dtype, gen, device), randn((4, 2, 33), dtype, gen, device)
    t = torch.tensor([1.0, 0.8, 0.5, 0.1], dtype=torch.float64, device=device)
    s = torch.tensor([0.0, 0.3, 0.5, 0.0], dtype=torch.float64, device=device)
    ddim = mf.ddim_step(x_hat, z_t, t, s, SCHED, backend=backend)
    for x_var in (0.0, torch.zeros(4, dtype=torch.float64, device=device), torch.tensor(0.0, device=device)):
        addim = mf.addim_step(x_hat, z_t, t, s, SCHED, x_var, backend=backend)
        assert torch.equal(addim, ddim), f"addim_step z_s with x_var={x_var}: differs from ddim_step"
    # eps_hat = 0 (a zero norm) with x_var = 0 must still be DDIM: no 0 / 0
    zero = torch.zeros_like(x_hat)
    out = mf.addim_step(zero, zero, t, s, SCHED, 0.0, backend=backend)
    assert torch.equal(out, zero), "addim_step z_s with eps_hat = 0 and x_var = 0: not 0"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("op", ["ddim", "addim"])
@pytest.mark.parametrize("backend_device", kernel_params("ddim_step", reference=True))
def test_s_equal_t_returns_z_t(backend_device, op, dtype, gen):
    backend, device = backend_device
    x_hat, z_t = randn((4, 50), dtype, gen, device), randn((4, 50), dtype, gen, device)
    t = torch.tensor([0.0, 0.3, 0.999, 1.0], dtype=torch.float64, device=device)
    x_var = torch.tensor([0.5, 0.1, 2.0, 0.0], dtype=torch.float64, device=device)
    for tt, ss in ((t, t), (0.4, 0.4), (1.0, 1.0), (0.0, 0.0)):
        out = step(op, x_hat, z_t, tt, ss, x_var, backend)
        tol = 2 * torch.finfo(dtype).eps * max(max_abs(x_hat), max_abs(z_t))
        err = max_abs(out.double() - z_t.double())
        assert err <= tol, f"{op}_step z_s at s = t = {tt}: max |z_s - z_t| = {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize(
    "backend,op",
    [(b, op) for b in mf.available_backends("ddim_step") if backend_device(b) == torch.device("cpu")
     for op in ("ddim", "addim")],
)
def test_empty_batch(backend, op):
    x_hat = torch.zeros(0, 5)
    out = step(op, x_hat, x_hat, 0.5, 0.2, 0.1, backend)
    assert out.shape == (0, 5), f"{op}_step z_s: shape {tuple(out.shape)}"


@needs_native
@pytest.mark.parametrize("op", ["ddim_step_native", "addim_step_native"])
def test_opcheck(op, gen):
    B = 3
    args = [torch.randn(B, 5, generator=gen), torch.randn(B, 5, generator=gen)]
    args += [torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 4.0, 3.0], dtype=torch.float64)]
    if op == "addim_step_native":
        args.append(torch.tensor([0.0, 0.1, 0.5], dtype=torch.float64))
    torch.library.opcheck(getattr(torch.ops.mcm_fast, op).default, tuple(args))


@needs_native
def test_compile_fullgraph_matches_eager(gen):
    torch._dynamo.reset()

    def fn(x_hat, z_t, t, s):
        return mf.ddim_step(x_hat, z_t, t, s, SCHED, backend="cpu")

    x_hat, z_t = torch.randn(4, 3, 8, generator=gen), torch.randn(4, 3, 8, generator=gen)
    t = torch.tensor([1.0, 0.7, 0.5, 0.2], dtype=torch.float64)
    s = torch.tensor([0.0, 0.3, 0.5, 0.1], dtype=torch.float64)
    compiled = torch.compile(fn, fullgraph=True)(x_hat, z_t, t, s)
    torch.testing.assert_close(compiled, fn(x_hat, z_t, t, s), msg=lambda m: f"compiled ddim_step z_s: {m}")


# --- registry ---------------------------------------------------------------------------------------------

X, Z = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0)).unbind()


def test_available_backends():
    backends = mf.available_backends()
    assert "reference" in backends and "cpu" in backends, backends


@pytest.mark.parametrize("op", ["ddim", "addim"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_unavailable_backend_is_an_error(backend, op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # else triton may run on CPU tensors
    with pytest.raises(RuntimeError,
                       match=rf"backend='{backend}'.*\(cuda: .*; triton: .*; cpu: .*; sdpa: does not implement "
                             rf"{op}_step; reference: ok\)"):
        step(op, X, Z, 0.5, 0.2, 0.1, backend)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match=r"^backend: .*'nope'"):
        mf.ddim_step(X, Z, 0.5, 0.2, SCHED, backend="nope")


@needs_native
def test_env_var_forces_backend(monkeypatch):
    cpu = torch.device("cpu")
    assert dispatch("ddim_step", cpu, False) is torch.ops.mcm_fast.ddim_step_native.default
    monkeypatch.setenv("MCM_FAST_BACKEND", "reference")
    assert dispatch("ddim_step", cpu, False) is ddim_step_reference
    assert dispatch("addim_step", cpu, False) is addim_step_reference
    monkeypatch.setenv("MCM_FAST_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="MCM_FAST_BACKEND='cuda'"):
        mf.ddim_step(X, Z, 0.5, 0.2, SCHED)
    mf.ddim_step(X, Z, 0.5, 0.2, SCHED, backend="reference")  # the argument wins over the variable
    monkeypatch.setenv("MCM_FAST_BACKEND", "cpu")
    assert dispatch("addim_step", cpu, True) is torch.ops.mcm_fast.addim_step_native.default


def test_env_var_unknown_value(monkeypatch):
    monkeypatch.setenv("MCM_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"^MCM_FAST_BACKEND: .*'nope'"):
        mf.addim_step(X, Z, 0.5, 0.2, SCHED, 0.1)


def test_gradients_flow_through_the_default_backend():
    x_hat = X.clone().requires_grad_()
    mf.ddim_step(x_hat, Z, 0.7, 0.2, SCHED).sum().backward()
    assert x_hat.grad is not None, "x_hat.grad: None after backward through ddim_step"
    (alpha_t, sigma_t), (alpha_s, sigma_s) = SCHED.alpha_sigma(0.7), SCHED.alpha_sigma(0.2)
    k = (alpha_s - alpha_t * sigma_s / sigma_t).float()  # d z_s / d x_hat (math.md §2)
    torch.testing.assert_close(x_hat.grad, k.expand_as(X), msg=lambda m: f"x_hat.grad: {m}")
    x_var = torch.tensor([0.1, 0.3], dtype=torch.float64, requires_grad=True)
    mf.addim_step(X, Z, 0.7, 0.2, SCHED, x_var).sum().backward()
    assert x_var.grad is not None and torch.isfinite(x_var.grad).all(), f"x_var.grad: {x_var.grad}"


@pytest.mark.parametrize("op", ["ddim", "addim"])
def test_gradcheck_float64(kernel, op):
    """Each kernel's backward against finite differences, per-sample times, x_var > 0 (aDDIM's c has a kink at 0)."""
    backend, device = kernel
    g = torch.Generator().manual_seed(7)
    x_hat, z_t = (randn((3, 2, 5), torch.float64, g, device).requires_grad_() for _ in range(2))
    t = torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64, device=device)
    s = torch.tensor([0.0, 0.5, 0.1], dtype=torch.float64, device=device)
    x_var = torch.tensor([0.4, 0.05, 0.2], dtype=torch.float64, device=device, requires_grad=op == "addim")
    inputs = (x_hat, z_t, x_var) if op == "addim" else (x_hat, z_t)
    assert torch.autograd.gradcheck(lambda *a: step(op, a[0], a[1], t, s, x_var if op == "ddim" else a[2], backend),
                                    inputs)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("op", ["ddim", "addim"])
def test_backward_matches_reference_autograd(kernel, op, dtype, gen):
    """Gradients of x_hat, z_t and x_var from each kernel equal the reference's autograd (x_var = 0 included)."""
    backend, device = kernel
    shape = (4, 3, 7, 5)
    x_hat, z_t, grad = (randn(shape, DTYPES[dtype], gen, device) for _ in range(3))
    t = torch.tensor([1.0, 0.8, 0.5, 0.3], dtype=torch.float64, device=device)
    s = torch.tensor([0.0, 0.8, 0.2, 0.1], dtype=torch.float64, device=device)
    x_var = torch.tensor([0.5, 0.1, 0.0, 0.02], dtype=torch.float64, device=device)
    results = []
    for b in (backend, "reference"):
        leaves = [v.clone().requires_grad_() for v in (x_hat, z_t, x_var)]
        step(op, leaves[0], leaves[1], t, s, leaves[2], b).backward(grad)
        results.append([v.grad for v in leaves])
    for name, got, want in zip(("x_hat.grad", "z_t.grad", "x_var.grad"), *results):
        if op == "ddim" and name == "x_var.grad":
            assert got is None and want is None
            continue
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == "f32" else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(got.double(), want.double(), **tol, msg=lambda m, name=name: f"{op} {name}: {m}")


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("op", ["ddim", "addim"])
def test_non_finite_values_propagate_like_the_reference(kernel, op, dtype, gen):
    """NaN and inf in the data come out where the reference puts them (the kernels' own conversions keep NaN)."""
    backend, device = kernel
    x_hat, z_t = (randn((3, 40), DTYPES[dtype], gen, device) for _ in range(2))
    x_hat[0, 3], z_t[1, 7], x_hat[2, 0] = float("nan"), float("inf"), 1e30 if dtype != "f16" else 7e4
    t = torch.tensor([0.9, 0.6, 0.4], dtype=torch.float64, device=device)
    s = torch.tensor([0.5, 0.3, 0.0], dtype=torch.float64, device=device)
    x_var = torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64, device=device)
    out = step(op, x_hat, z_t, t, s, x_var, backend)
    ref = step(op, x_hat, z_t, t, s, x_var, "reference")
    assert torch.equal(out.isnan(), ref.isnan()), (
        f"{op} z_s: NaN at {out.isnan().nonzero().tolist()}, reference {ref.isnan().nonzero().tolist()}")
    assert torch.equal(out.isinf(), ref.isinf()), (
        f"{op} z_s: inf at {out.isinf().nonzero().tolist()}, reference {ref.isinf().nonzero().tolist()}")
