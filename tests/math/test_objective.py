"""MCMObjective (Algorithm 1, math.md §4, Direct CM of §6) against closed forms and independent solves."""
import math

import pytest
import torch

import mcm_fast as mf
from closed_form import (
    C,
    alpha_sigma,
    consistency_function,
    exact_denoiser,
    exact_flow,
    inv_ddim,
    logsnr,
    logsnr_edges,
    segment_start,
)
from mcm_fast.data.toy import GaussianMixture
from mcm_fast.objectives import TeacherSteps

SCHED = mf.CosineSchedule()


def gaussian_data(n=512, d=64, seed=1):
    return C * torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_algorithm_2_with_the_exact_consistency_function_samples_the_data(steps):
    z1 = torch.randn(256, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = mf.sample(consistency_function(steps), steps, schedule=SCHED, noise=z1)
    assert x.var().item() == pytest.approx(C**2, rel=0.015)
    target = exact_flow(z1, 1.0, 0.0)  # deterministic: the flow map of each noise
    assert ((x - target).norm() / target.norm()).item() < 2e-3


def test_cd_loss_of_the_exact_function_vanishes_as_the_teacher_grid_is_refined():
    x, f_star = gaussian_data(), consistency_function(4)
    losses = {}
    for n in (16, 64, 256, 1024):
        obj = mf.MCMObjective(SCHED, student_steps=4, teacher_steps=n, teacher_solver="ddim")
        for scale in (1.0, 1.05):
            student = lambda z, t, scale=scale: scale * f_star(z, t)  # noqa: E731
            losses[n, scale] = obj(student, x, teacher=exact_denoiser,
                                   generator=torch.Generator().manual_seed(2)).item()
    exact = [losses[n, 1.0] for n in (16, 64, 256, 1024)]
    assert all(a > b for a, b in zip(exact, exact[1:])), exact
    assert exact[-1] < 1e-2 * min(losses[n, 1.05] for n in (256, 1024)), losses


@pytest.mark.parametrize("steps", [3, 4])  # (at S = 2 both spacings put the edge at t = 1/2, logSNR 0)
def test_logsnr_boundaries_distill_and_sample_the_exact_function(steps):
    """Segment edges uniform in logSNR: the exact consistency function for those edges samples the data
    with boundaries="logsnr", its CD loss vanishes as the grid is refined, and every training time lies on
    n_seg uniform steps inside its segment; the function for edges k / S is no minimizer there."""
    edges = logsnr_edges(steps)
    f_star = consistency_function(steps, edges=edges)
    z1 = torch.randn(256, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = mf.sample(f_star, steps, schedule=SCHED, noise=z1, boundaries="logsnr")
    assert x.var().item() == pytest.approx(C**2, rel=0.015)
    assert ((x - exact_flow(z1, 1.0, 0.0)).norm() / x.norm()).item() < 2e-3
    data, n_seg = gaussian_data(), 1024
    obj = mf.MCMObjective(SCHED, student_steps=steps, teacher_steps=n_seg * steps, teacher_solver="ddim",
                          boundaries="logsnr")
    losses = {}
    for name, student in (("logsnr", f_star), ("uniform", consistency_function(steps))):
        diag = obj.per_sample(student, data, n_seg, teacher=exact_denoiser, generator=torch.Generator().manual_seed(2))
        losses[name] = diag.loss.mean().item()
    lo, hi = edges[diag.segment], edges[diag.segment + 1]
    position = (diag.t - lo) / (hi - lo) * n_seg
    torch.testing.assert_close(position, position.round(), rtol=0, atol=1e-6)
    assert position.min() >= 1 - 1e-6 and position.max() <= n_seg + 1e-6
    assert losses["logsnr"] < 1e-2 * losses["uniform"], losses


def recording(model):
    """Wraps a model so that every call's (z, t, cond) is kept in .calls."""
    calls = []

    def wrapped(z, t, **cond):
        calls.append((z, t, cond))
        return model(z, t, **cond)

    wrapped.calls = calls
    return wrapped


def test_training_from_data_at_n_rel_1_is_the_diffusion_loss():
    """S = N: every example is a boundary example (t = t_step + 1/S), the target is exactly x and the loss is
    (SNR + 1) ||x_hat - x||^2 at the student's own time."""
    x = gaussian_data(64, 8)
    student = recording(lambda z, t: 0.3 * z + 0.1)
    obj = mf.MCMObjective(SCHED, student_steps=4, teacher_steps=4, loss="l2_squared", weighting="snr+1")
    diag = obj.per_sample(student, x, 1, generator=torch.Generator().manual_seed(0))
    z_t, t, _ = student.calls[-1]
    torch.testing.assert_close(t, diag.t)
    torch.testing.assert_close(t - diag.segment / 4, torch.full_like(t, 0.25), rtol=0, atol=1e-15)
    expected = (torch.exp(logsnr(t)) + 1) * (0.3 * z_t + 0.1 - x).square().sum(1)
    torch.testing.assert_close(diag.loss.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["addim", "ddim", "euler"])
def test_training_from_data_with_an_oracle_student_has_zero_loss(solver):
    """From data the teacher is x itself: f = x makes every target x, for any n_rel."""
    x = gaussian_data(64, 8)
    obj = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=64, teacher_solver=solver, loss="l2_squared")
    diag = obj.per_sample(lambda z, t: x, x, 32, generator=torch.Generator().manual_seed(0))
    rel = diag.loss / (torch.exp(logsnr(diag.t)) + 1) / x.square().sum(1)
    # DDIM and aDDIM (x_var = 0) are exact along the conditional path of x; Euler only approximates it, to first
    # order in its step (1/64 in t: about 1% of ||x||^2 at worst)
    assert rel.max().item() < (2e-2 if solver == "euler" else 1e-20)


def rk4_teacher_solve(mixture, z_t, t, t_step, steps=400):
    """RK4 on the probability-flow ODE in EDM variables: x~ = z / alpha, dx~/dsigma~ = (x~ - D(x~)) / sigma~
    with sigma~ = sigma / alpha, uniform in log sigma~ from t to t_step, one step size per sample."""
    def slope(x_ve, log_sig):
        sig = torch.exp(log_sig)[:, None]
        alpha = 1 / torch.sqrt(1 + sig**2)
        denoised = mixture.posterior(alpha * x_ve, alpha[:, 0], (sig * alpha)[:, 0])[0]
        return (x_ve - denoised) / sig * sig  # d x~ / d log sigma~

    (a_t, s_t), (a_s, s_s) = alpha_sigma(t), alpha_sigma(t_step)
    log_start, log_end = torch.log(s_t / a_t), torch.log(s_s / a_s)
    h = (log_end - log_start) / steps
    x_ve, log_sig = z_t / a_t[:, None], log_start
    for _ in range(steps):
        k1 = slope(x_ve, log_sig)
        k2 = slope(x_ve + h[:, None] / 2 * k1, log_sig + h / 2)
        k3 = slope(x_ve + h[:, None] / 2 * k2, log_sig + h / 2)
        k4 = slope(x_ve + h[:, None] * k3, log_sig + h)
        x_ve = x_ve + h[:, None] / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        log_sig = log_sig + h
    return a_s[:, None] * x_ve


def test_direct_target_is_the_high_accuracy_ode_solution():
    """target="direct" regresses onto invDDIM of the teacher's many-step solve to t_step: a student that
    returns invDDIM of an RK4 solve (written here, in other variables) scores ~0, the teacher's x_hat does not."""
    mixture = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]), torch.tensor([0.3, 0.2, 0.25]))
    teacher = lambda z, t: mixture.posterior(z, *alpha_sigma(t))[0]  # noqa: E731
    x = mixture.sample(48, torch.Generator().manual_seed(0))

    def rk4_student(z, t):
        t_step = segment_start(t, 2)
        return inv_ddim(rk4_teacher_solve(mixture, z, t, t_step), z, t, t_step)

    obj = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=1024, teacher_solver="heun", target="direct",
                          loss="l2_squared")
    losses = {}
    for name, student in (("rk4", rk4_student), ("teacher", teacher)):
        diag = obj.per_sample(student, x, 512, teacher=teacher, generator=torch.Generator().manual_seed(3))
        losses[name] = (diag.loss / (torch.exp(logsnr(diag.t)) + 1)).sqrt()  # ||x_hat - x_target||
    assert losses["rk4"].max().item() < 5e-4, losses["rk4"]  # Heun on 1024 steps vs RK4: O(h^2) apart
    assert losses["teacher"].median().item() > 30 * losses["rk4"].median().item()


def test_reference_and_student_share_dropout_masks():
    drop = torch.nn.Dropout(0.5)
    masks = []

    def student(z, t):
        mask = drop(torch.ones_like(z))
        masks.append(mask)
        return z * mask

    mf.MCMObjective(SCHED, student_steps=2, teacher_steps=16)(student, torch.randn(8, 32), teacher=lambda z, t: z)
    assert len(masks) == 2 and torch.equal(masks[0], masks[1]), "the two student calls drew different dropout masks"
    assert not torch.equal(masks[0], torch.ones_like(masks[0]))


def test_label_dropout_replaces_labels_with_the_null_class():
    student = recording(lambda z, t, label: z)
    labels = torch.arange(1000) % 10
    obj = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=16, label_dropout=0.25, null_label=10)
    obj(student, torch.randn(1000, 2), generator=torch.Generator().manual_seed(0), label=labels)
    seen = student.calls[-1][2]["label"]
    dropped = seen == 10
    assert 0.2 < dropped.float().mean().item() < 0.3
    assert torch.equal(seen[~dropped], labels[~dropped])
    assert torch.equal(student.calls[0][2]["label"], seen), "reference and student must see the same labels"


def test_prompt_dropout_replaces_whole_embeddings_with_the_null_prompt_and_guides_against_it():
    """null_cond with a tensor (the empty prompt's embedding [1, L, D]): a dropped example sees it whole, the others
    their own; guidance distilled calls the teacher's unconditional half with it too."""
    student = recording(lambda z, t, encoder_hidden_states, guidance=None: z)
    teacher = recording(lambda z, t, encoder_hidden_states: z)
    text, null = torch.randn(400, 3, 4), torch.randn(1, 3, 4)
    obj = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=16, label_dropout=0.25, guidance=(1, 2),
                          null_cond={"encoder_hidden_states": null})
    obj(student, torch.randn(400, 2), teacher, generator=torch.Generator().manual_seed(0), encoder_hidden_states=text)
    seen = student.calls[-1][2]["encoder_hidden_states"]
    dropped = (seen == null).flatten(1).all(1)
    assert 0.18 < dropped.float().mean().item() < 0.32
    assert torch.equal(seen[~dropped], text[~dropped])
    doubled = teacher.calls[0][2]["encoder_hidden_states"]  # [cond, null] in one call
    assert doubled.shape == (800, 3, 4) and torch.equal(doubled[:400], seen)
    assert torch.equal(doubled[400:], null.expand(400, 3, 4))
    with pytest.raises(ValueError, match="^null_cond: expected None beside null_label=3"):
        mf.MCMObjective(SCHED, null_label=3, null_cond={"label": 3})
    with pytest.raises(ValueError, match="^null_cond: expected a dict"):
        mf.MCMObjective(SCHED, label_dropout=0.1, null_cond={})


def test_weightings_and_losses():
    x = gaussian_data(32, 4)
    student = lambda z, t: 0.5 * z  # noqa: E731
    diags = {}
    for weighting in ("snr+1", "sqrt(snr+1)"):
        for loss in ("pseudo_huber", "l2_squared"):
            obj = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=16, weighting=weighting, loss=loss,
                                  huber_eps=0.5)
            diags[weighting, loss] = obj.per_sample(student, x, 8, teacher=exact_denoiser,
                                                    generator=torch.Generator().manual_seed(0))
    w = torch.exp(logsnr(diags["snr+1", "l2_squared"].t)) + 1
    dist_sq = diags["snr+1", "l2_squared"].loss.double() / w
    torch.testing.assert_close(diags["sqrt(snr+1)", "l2_squared"].loss.double(), w.sqrt() * dist_sq, rtol=1e-5,
                               atol=0)
    huber = torch.sqrt(dist_sq + 0.25) - 0.5
    torch.testing.assert_close(diags["snr+1", "pseudo_huber"].loss.double(), w * huber, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("solver", ["addim", "ddim", "euler", "heun"])
@pytest.mark.parametrize("xvar_frac", [0.75, "analytic"])
def test_every_teacher_solver_distills_and_backpropagates(solver, xvar_frac):
    net = torch.nn.Linear(8, 8).double()
    student = lambda z, t: net(z)  # noqa: E731
    obj = mf.MCMObjective(SCHED, student_steps=4, teacher_steps=(8, 64, 10), teacher_solver=solver, xvar_frac=xvar_frac)
    loss = obj(student, gaussian_data(16, 8), teacher=exact_denoiser, step=5)
    loss.backward()
    assert torch.isfinite(loss) and net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


def test_addim_teacher_step_into_t_0_is_ddim():
    """S = 1 with one teacher step: every example steps t = 1 -> s = 0 = t_step, where the aDDIM teacher's step
    is DDIM's (integrators.endpoint_x_var), so both teachers give the same loss; with two steps (s = 1/2 too) not."""
    x = gaussian_data(32, 8)
    teacher = lambda z, t: 0.9 * exact_denoiser(z, t)  # noqa: E731  (x_teacher != x, so x_var > 0)

    def loss(solver, teacher_steps):
        obj = mf.MCMObjective(SCHED, student_steps=1, teacher_steps=teacher_steps, teacher_solver=solver,
                              loss="l2_squared")
        return obj(lambda z, t: 0.5 * z, x, teacher=teacher, generator=torch.Generator().manual_seed(0)).item()

    assert loss("addim", 1) == loss("ddim", 1)
    assert loss("addim", 2) != pytest.approx(loss("ddim", 2), rel=1e-3)


def test_teacher_step_schedule():
    steps = TeacherSteps(64, 1280, 100_000)
    assert steps(0) == pytest.approx(64)
    assert steps(100_000) == pytest.approx(1280) and steps(10**6) == pytest.approx(1280)
    assert steps(50_000) == pytest.approx(math.sqrt(64 * 1280))  # log-linear: the geometric mean halfway
    obj = mf.MCMObjective(SCHED, student_steps=8)
    assert obj.segment_steps(0) == 8 and obj.segment_steps(100_000) == 160
    assert mf.MCMObjective(SCHED, student_steps=4, teacher_steps=100).segment_steps(7) == 25  # fixed


BAD_OPTIONS = [
    ("schedule", dict(schedule="cosine"), TypeError),
    ("student_steps", dict(student_steps=0), ValueError),
    ("student_steps", dict(student_steps=2.0), TypeError),
    ("teacher_steps", dict(teacher_steps=(64, 1280)), ValueError),
    ("teacher_steps", dict(teacher_steps=(64, 0, 10)), ValueError),
    ("teacher_steps", dict(student_steps=8, teacher_steps=4), ValueError),
    ("teacher_solver", dict(teacher_solver="rk4"), ValueError),
    ("xvar_frac", dict(xvar_frac=-0.1), ValueError),
    ("xvar_frac", dict(xvar_frac="exact"), ValueError),
    ("loss", dict(loss="l1"), ValueError),
    ("huber_eps", dict(huber_eps=0.0), ValueError),
    ("weighting", dict(weighting="snr"), ValueError),
    ("target", dict(target="x"), ValueError),
    ("label_dropout", dict(label_dropout=1.5), ValueError),
    ("null_label", dict(label_dropout=0.1), ValueError),
    ("boundaries", dict(boundaries="log"), ValueError),
]


@pytest.mark.parametrize("name,kwargs,error", BAD_OPTIONS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_OPTIONS)])
def test_bad_options_name_themselves(name, kwargs, error):
    kwargs = {"schedule": SCHED, **kwargs}
    with pytest.raises(error, match=f"^{name}: "):
        mf.MCMObjective(**kwargs)


def test_bad_calls_name_the_argument():
    obj = mf.MCMObjective(SCHED, teacher_solver="heun")
    with pytest.raises(ValueError, match="^teacher: "):
        obj(lambda z, t: z, torch.randn(2, 3))  # Heun needs a teacher model
    with pytest.raises(TypeError, match="^x: "):
        obj(lambda z, t: z, [1.0, 2.0], teacher=lambda z, t: z)
    with pytest.raises(TypeError, match="^student: "):
        obj("net", torch.randn(2, 3), teacher=lambda z, t: z)
    with pytest.raises(ValueError, match="^label: "):
        mf.MCMObjective(SCHED, label_dropout=0.1, null_label=3)(lambda z, t, label=None: z, torch.randn(2, 3))
