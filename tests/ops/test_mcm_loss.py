"""mcm_target, mcm_loss and mcm_target_loss (Algorithm 1, steps 6-8): the reference against independent
computations, every fused backend against the reference (forward, backward, dtypes, odd and non-contiguous
shapes), op registration, and MCMObjective giving the same loss and gradients on every backend."""
import pytest
import torch

import mcm_fast as mf
from mcm_fast.losses import mcm_target_reference, target_coefficients
from mcm_fast.ops.native import NATIVE_ERROR, TRITON_ERROR, native_keys
from parity import DTYPES, VIEWS, assert_parity, kernel_params, randn, shape_id

SCHED = mf.CosineSchedule()
KERNELS = kernel_params("mcm_target_sqdist")
SHAPES = [(3, 1, 5, 7), (2, 3, 17, 19), (1, 4, 9, 9), (7, 1000), (2, 3, 70000), (5, 0)]
LOSSES = ["pseudo_huber", "l2_squared"]


@pytest.fixture(params=KERNELS)
def kernel(request):
    return request.param


def times(batch, g, device):
    """Per-sample t_step <= s <= t on the unit interval, s = t_step for every other sample (n_rel = 1)."""
    t_step = 0.8 * torch.rand(batch, generator=g, dtype=torch.float64)
    t = t_step + (1 - t_step) * (0.05 + 0.95 * torch.rand(batch, generator=g, dtype=torch.float64))
    s = t_step + (t - t_step) * torch.rand(batch, generator=g, dtype=torch.float64)
    s[::2] = t_step[::2]
    return t.to(device), s.to(device), t_step.to(device)


def target_inputs(shape, dtype, g, device):
    return [randn(shape, dtype, g, device) for _ in range(3)] + list(times(shape[0], g, device))


# --- the reference against independent computations -------------------------------------------------------

def test_reference_target_jumps_where_the_reference_model_jumps(gen):
    """DDIM_{t->t_step}(x_target, z_t) = DDIM_{s->t_step}(x_ref, z_s): the defining property (step 7)."""
    x_ref, z_s, z_t, t, s, t_step = target_inputs((6, 3, 8), torch.float64, gen, "cpu")
    target = mf.mcm_target(x_ref, z_s, z_t, t, s, t_step, SCHED, backend="reference")
    lhs = mf.ddim_step(target, z_t, t, t_step, SCHED, backend="reference")
    rhs = mf.ddim_step(x_ref, z_s, s, t_step, SCHED, backend="reference")
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_coefficients_are_the_reference_target(gen):
    x_ref, z_s, z_t, t, s, t_step = target_inputs((6, 11), torch.float64, gen, "cpu")
    logsnrs = [SCHED.logsnr(v) for v in (t, s, t_step)]
    a, b, c = target_coefficients(*logsnrs).unbind(1)
    combined = a[:, None] * x_ref + b[:, None] * z_s + c[:, None] * z_t
    torch.testing.assert_close(combined, mcm_target_reference(x_ref, z_s, z_t, *logsnrs), rtol=1e-10, atol=1e-10)
    assert torch.equal(a[::2], torch.zeros_like(a[::2])), "a must be exactly 0 where s = t_step"


@pytest.mark.parametrize("loss", LOSSES)
def test_reference_loss_closed_form(loss):
    x_hat = torch.zeros(2, 3, dtype=torch.float64)
    target = torch.tensor([[3.0, 4.0, 0.0], [1e-6, 0.0, 0.0]], dtype=torch.float64)  # distances 5 and 1e-6
    weight = torch.tensor([2.0, 3.0], dtype=torch.float64)
    got = mf.mcm_loss(x_hat, target, weight, loss=loss, huber_eps=1e-3, backend="reference")
    d = torch.tensor([5.0, 1e-6], dtype=torch.float64)
    want = weight * (d**2 if loss == "l2_squared" else torch.sqrt(d**2 + 1e-6) - 1e-3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


# --- every fused backend against the reference ------------------------------------------------------------

def check_target(backend, device, shape, dtype, g):
    x_ref, z_s, z_t, t, s, t_step = target_inputs(shape, dtype, g, device)
    out = mf.mcm_target(x_ref, z_s, z_t, t, s, t_step, SCHED, backend=backend)
    ref = mf.mcm_target(x_ref, z_s, z_t, t, s, t_step, SCHED, backend="reference")
    truth = mf.mcm_target(x_ref.double(), z_s.double(), z_t.double(), t, s, t_step, SCHED, backend="reference")
    assert_parity("mcm_target x_target", out, ref, truth, x_ref.double(), z_s.double(), z_t.double())


def check_distance(op, backend, device, shape, dtype, loss, g):
    x_hat = randn(shape, dtype, g, device)
    x_ref, z_s, z_t, t, s, t_step = target_inputs(shape, dtype, g, device)
    weight = (1 + torch.rand(shape[0], generator=g, dtype=torch.float64)).to(device)
    if op == "mcm_loss":
        def run(b, *a):
            return mf.mcm_loss(*a[:2], weight, loss=loss, backend=b)
        args = (x_hat, z_t)
    else:
        def run(b, *a):
            return mf.mcm_target_loss(*a, t, s, t_step, SCHED, weight, loss=loss, backend=b)
        args = (x_hat, x_ref, z_s, z_t)
    out, ref = run(backend, *args), run("reference", *args)
    truth = run("reference", *(a.double() for a in args))
    assert out.dtype == ref.dtype and out.device == x_hat.device, f"{op}: got {out.dtype} on {out.device}"
    assert_parity(f"{op} loss", out, ref, truth, truth)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_target_parity(shape, dtype, kernel, gen):
    check_target(*kernel, shape, dtype, gen)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("op", ["mcm_loss", "mcm_target_loss"])
def test_loss_parity(op, shape, dtype, loss, kernel, gen):
    check_distance(op, *kernel, shape, dtype, loss, gen)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_fused_target_loss_is_loss_of_target(dtype, kernel, gen):
    backend, device = kernel
    x_hat = randn((4, 3, 9), dtype, gen, device)
    x_ref, z_s, z_t, t, s, t_step = target_inputs((4, 3, 9), dtype, gen, device)
    fused = mf.mcm_target_loss(x_hat, x_ref, z_s, z_t, t, s, t_step, SCHED, backend=backend)
    target = mf.mcm_target(x_ref, z_s, z_t, t, s, t_step, SCHED, backend=backend)
    two_pass = mf.mcm_loss(x_hat, target, backend=backend)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 3e-2  # two_pass rounds the target
    torch.testing.assert_close(fused, two_pass, rtol=rtol, atol=0)


@pytest.mark.parametrize("view", VIEWS.keys())
def test_non_contiguous(view, kernel, gen):
    backend, device = kernel
    new = lambda shape: randn(shape, torch.float32, gen, device)  # noqa: E731
    x_hat, x_ref, z_s, z_t = (VIEWS[view](3, new) for _ in range(4))
    assert not x_ref.is_contiguous()
    t, s, t_step = times(3, gen, device)
    contiguous = [v.contiguous() for v in (x_hat, x_ref, z_s, z_t)]
    for name, fn in (
        ("mcm_target", lambda *a: mf.mcm_target(*a[1:], t, s, t_step, SCHED, backend=backend)),
        ("mcm_loss", lambda *a: mf.mcm_loss(a[0], a[3], backend=backend)),
        ("mcm_target_loss", lambda *a: mf.mcm_target_loss(*a, t, s, t_step, SCHED, backend=backend)),
    ):
        assert torch.equal(fn(x_hat, x_ref, z_s, z_t), fn(*contiguous)), f"{name}: differs on non-contiguous views"


@pytest.mark.parametrize("backend_device", kernel_params("mcm_target", reference=True))
def test_identity_jump_ignores_a_non_finite_x_ref(backend_device, gen):
    """n_rel = 1 (s = t_step): the target must not involve the reference model's output at all."""
    backend, device = backend_device
    x_ref, z_s, z_t, t, s, t_step = target_inputs((4, 10), torch.float32, gen, device)
    x_ref[:, 1:] = float("nan")
    x_ref[:, 0] = float("inf")
    target = mf.mcm_target(x_ref, z_s, z_t, t, s, t_step, SCHED, backend=backend)
    assert torch.isfinite(target[0::2]).all(), "mcm_target x_target: not finite where s = t_step"
    x_hat = torch.zeros_like(x_ref)
    loss = mf.mcm_target_loss(x_hat, x_ref, z_s, z_t, t, s, t_step, SCHED, backend=backend)
    assert torch.isfinite(loss[0::2]).all() and loss[1::2].isnan().all(), f"mcm_target_loss: {loss}"


@pytest.mark.parametrize("backend_device", kernel_params("mcm_target", reference=True))
def test_empty_batch(backend_device):
    backend, device = backend_device
    x = torch.zeros(0, 5, device=device)
    assert mf.mcm_target(x, x, x, 0.5, 0.3, 0.2, SCHED, backend=backend).shape == (0, 5)
    assert mf.mcm_target_loss(x, x, x, x, 0.5, 0.3, 0.2, SCHED, backend=backend).shape == (0,)


# --- backward ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("op", ["mcm_loss", "mcm_target_loss"])
def test_backward_parity(op, dtype, loss, kernel, gen):
    """Gradients of x_hat, target and weight (mcm_loss), of x_hat and weight (mcm_target_loss), against the
    float64 truth: at most 2x the reference's own error in that dtype."""
    backend, device = kernel
    shape = (4, 3, 7, 5)
    x_hat = randn(shape, DTYPES[dtype], gen, device)
    x_ref, z_s, z_t, t, s, t_step = target_inputs(shape, DTYPES[dtype], gen, device)
    weight = (1 + torch.rand(4, generator=gen)).to(device)
    grad = torch.rand(4, generator=gen).to(device)

    def grads(b, x_hat, x_ref, z_s, z_t, weight):
        leaves = [v.clone().requires_grad_() for v in (x_hat, z_t, weight)]
        if op == "mcm_loss":
            out = mf.mcm_loss(*leaves, loss=loss, backend=b)
        else:
            out = mf.mcm_target_loss(leaves[0], x_ref, z_s, z_t, t, s, t_step, SCHED, leaves[2], loss=loss, backend=b)
        out.backward(grad.to(out.dtype))
        return [v.grad for v in leaves]

    inputs = (x_hat, x_ref, z_s, z_t, weight)
    got, ref = grads(backend, *inputs), grads("reference", *inputs)
    truth = grads("reference", *(v.double() for v in inputs))
    for name, g, r, w in zip(("x_hat.grad", "target.grad", "weight.grad"), got, ref, truth):
        if op == "mcm_target_loss" and name == "target.grad":
            assert g is None and r is None, f"{op} {name}: the target is a stop-gradient"
            continue
        assert_parity(f"{op} {name}", g, r, w, w)


def test_gradcheck_float64(kernel, gen):
    backend, device = kernel
    x_hat, x_ref, z_s, z_t = (randn((3, 2, 5), torch.float64, gen, device).requires_grad_() for _ in range(4))
    t, s, t_step = times(3, gen, device)
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: mf.mcm_target(*a, t, s, t_step, SCHED, backend=backend),
                                    (x_ref, z_s, z_t))
    for loss in LOSSES:
        def plain(x, target, w, loss=loss):
            return mf.mcm_loss(x, target, w, loss=loss, backend=backend)

        def fused(x, w, loss=loss):
            return mf.mcm_target_loss(x, x_ref, z_s, z_t, t, s, t_step, SCHED, w, loss=loss, backend=backend)

        assert torch.autograd.gradcheck(plain, (x_hat, z_t, weight))
        assert torch.autograd.gradcheck(fused, (x_hat, weight))


def test_target_loss_is_a_stop_gradient(kernel, gen):
    backend, device = kernel
    x_hat, x_ref, z_s, z_t = (randn((2, 6), torch.float32, gen, device).requires_grad_() for _ in range(4))
    mf.mcm_target_loss(x_hat, x_ref, z_s, z_t, 0.9, 0.5, 0.3, SCHED, backend=backend).sum().backward()
    assert x_hat.grad is not None and all(v.grad is None for v in (x_ref, z_s, z_t))


# --- registration -----------------------------------------------------------------------------------------

OP_ARGS = {  # op -> inputs after (B, g): the schema of every backend's version
    "mcm_target": lambda g: [torch.randn(3, 5, generator=g) for _ in range(3)],
    "mcm_sqdist": lambda g: [torch.randn(3, 5, generator=g) for _ in range(2)],
    "mcm_target_sqdist": lambda g: [torch.randn(3, 5, generator=g) for _ in range(4)],
    "mcm_sqdist_backward": lambda g: [torch.randn(3, 5, generator=g), torch.rand(3, generator=g), torch.bfloat16],
}
LOGSNRS = [torch.tensor(v, dtype=torch.float64) for v in ([-2.0, 0.0, 3.0], [1.0, 4.0, 3.0], [2.0, 4.0, 5.0])]


def op_params():
    """(op, backend suffix, save_diff) for every registered op; save_diff only where the op takes it."""
    params = []
    for op in OP_ARGS:
        for save_diff in (True, False) if "sqdist" in op and "backward" not in op else (None,):
            tag = "" if save_diff is None else f"-save{int(save_diff)}"
            marks = [pytest.mark.skipif(not native_keys(op), reason=f"mcm_fast._C lacks {op}_native: {NATIVE_ERROR}")]
            params.append(pytest.param(op, "native", save_diff, marks=marks, id=f"{op}-native{tag}"))
            marks = [pytest.mark.skipif(TRITON_ERROR is not None, reason=f"triton is missing: {TRITON_ERROR}")]
            params.append(pytest.param(op, "triton", save_diff, marks=marks, id=f"{op}-triton{tag}"))
    return params


@pytest.mark.parametrize("op,suffix,save_diff", op_params())
def test_opcheck(op, suffix, save_diff, gen):
    args = OP_ARGS[op](gen)
    if op in ("mcm_target", "mcm_target_sqdist"):
        args += LOGSNRS
    if save_diff is not None:
        args.append(save_diff)
    device = "cuda" if suffix == "triton" and torch.cuda.is_available() else "cpu"
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    # Triton's interpreter cannot run on the fake tensors of compile-mode tracing: on CPU the trace tests skip
    tests = None if device == "cuda" or suffix == "native" else (
        "test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(getattr(torch.ops.mcm_fast, f"{op}_{suffix}").default, tuple(args), test_utils=tests
                          or ("test_schema", "test_autograd_registration", "test_faketensor",
                              "test_aot_dispatch_dynamic"))


@pytest.mark.skipif(not native_keys("mcm_target_sqdist"), reason=f"mcm_fast._C lacks its CPU kernels: {NATIVE_ERROR}")
def test_compile_fullgraph_forward_and_backward(gen):
    torch._dynamo.reset()

    def step(x_hat, x_ref, z_s, z_t, t, s, t_step):
        return mf.mcm_target_loss(x_hat, x_ref, z_s, z_t, t, s, t_step, SCHED, backend="cpu").mean()

    x_hat, x_ref, z_s, z_t = (torch.randn(4, 3, 8, generator=gen) for _ in range(4))
    t, s, t_step = times(4, gen, "cpu")
    losses, grads = [], []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaf = x_hat.clone().requires_grad_()
        loss = fn(leaf, x_ref, z_s, z_t, t, s, t_step)
        loss.backward()
        losses.append(loss)
        grads.append(leaf.grad)
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(grads[1], grads[0])


# --- MCMObjective on every backend ------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["mcm", "direct"])
def test_objective_same_loss_and_gradients_on_every_backend(target, kernel):
    backend, device = kernel
    net = torch.nn.Sequential(torch.nn.Linear(17, 32), torch.nn.SiLU(), torch.nn.Linear(32, 16)).to(device)

    def student(z, t):
        return net(torch.cat([z, t.float()[:, None].expand(z.shape[0], 1)], dim=1))

    teacher = lambda z, t: 0.9 * z  # noqa: E731
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)).to(device)
    results = []
    for b in (backend, "reference"):
        obj = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=8, target=target, backend=b)
        net.zero_grad()
        loss = obj(student, x, teacher=teacher, generator=torch.Generator(device).manual_seed(3))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for got, want in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# --- errors -----------------------------------------------------------------------------------------------

X = torch.randn(2, 3)


@pytest.mark.parametrize("call,error,match", [
    (lambda: mf.mcm_target(X, X, X, 0.5, 0.6, 0.1, SCHED), ValueError, r"^s: expected s <= t"),
    (lambda: mf.mcm_target(X, X, X, 0.5, 0.3, 0.4, SCHED), ValueError, r"^t_step: expected t_step <= s"),
    (lambda: mf.mcm_target(X, X, X, 0.5, 0.5, 0.5, SCHED), ValueError, r"^t_step: expected .* t_step < t"),
    (lambda: mf.mcm_target(X, X[:1], X, 0.5, 0.3, 0.1, SCHED), ValueError, r"^z_s: expected shape"),
    (lambda: mf.mcm_target(X, X, X.double(), 0.5, 0.3, 0.1, SCHED), TypeError, r"^z_t: expected dtype"),
    (lambda: mf.mcm_target(X, X, X, 1.5, 0.3, 0.1, SCHED), ValueError, r"^t: expected a finite value in \[0.0, 1.0\]"),
    (lambda: mf.mcm_loss(X, X[:, :2]), ValueError, r"^target: expected shape"),
    (lambda: mf.mcm_loss(X, X, loss="l1"), ValueError, r"^loss: expected one of"),
    (lambda: mf.mcm_loss(X, X, huber_eps=0.0), ValueError, r"^huber_eps: expected a number in \(0, "),
    (lambda: mf.mcm_loss(X, X, weight=torch.ones(3)), ValueError,
     r"^weight: expected a float, a 0-d tensor or shape \[2\]"),
    (lambda: mf.mcm_target_loss(X[:, :2], X, X, X, 0.5, 0.3, 0.1, SCHED), ValueError, r"^x_hat: expected shape"),
])
def test_bad_arguments_name_themselves(call, error, match):
    with pytest.raises(error, match=match):
        call()

