"""Bad calls of the public API: every bad value of an argument raises ValueError or TypeError whose message
starts with that argument's own name, before any large allocation; checked case by case (the calls an earlier
review found wrong) and property-based over arbitrary values."""
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import mcm_fast as mf
from mcm_fast import consistency, editing
from mcm_fast.metrics import distances, frechet, grid
from mcm_fast.train import ema

SCHED = mf.CosineSchedule()
X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
IMAGES = torch.rand(2, 1, 4, 4) * 2 - 1


class Zero(nn.Module):
    """A model (z_t, t) -> x_hat = 0 with a schedule, as mf.sample takes it."""

    schedule = SCHED

    def forward(self, z_t, t, **cond):
        return torch.zeros_like(z_t)


MODEL = Zero()
OBJ = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=8)

CALLS = {  # id -> (call, exception type, the argument its message must start with)
    "sample-n_steps-1e8": (lambda: mf.sample(MODEL, 10**8, shape=(2, 3)), ValueError, "n_steps"),
    "sample-n_steps-2^40": (lambda: mf.sample(MODEL, 2**40, shape=(2, 3)), ValueError, "n_steps"),
    "sample_diffusion-n_steps-2^40": (lambda: mf.sample_diffusion(MODEL, 2**40, shape=(2, 3)), ValueError, "n_steps"),
    "inpaint-n_steps-1e9": (lambda: editing.inpaint(MODEL, X, torch.ones_like(X), 10**9), ValueError, "n_steps"),
    "sample-shape-negative": (lambda: mf.sample(MODEL, 2, shape=(-1, 3)), ValueError, "shape[0]"),
    "sample-shape-huge": (lambda: mf.sample(MODEL, 2, shape=(2**40, 1024)), ValueError, "shape"),
    "sample-shape-int": (lambda: mf.sample(MODEL, 2, shape=5), TypeError, "shape"),
    "sample-shape-float": (lambda: mf.sample(MODEL, 2, shape=(2.5, 3)), TypeError, "shape[0]"),
    "sample-boundaries": (lambda: mf.sample(MODEL, 2, shape=(2, 3), boundaries="bogus"), ValueError, "boundaries"),
    "XVarTable-lists": (lambda: mf.XVarTable([0.0, 1.0], [0.1, 0.2]), TypeError, "t"),
    "XVarTable-int-tensors": (lambda: mf.XVarTable(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])), TypeError,
                              "x_var"),
    "XVarTable-call-list": (lambda: mf.XVarTable(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))([0.5]),
                            TypeError, "t"),
    "XVarTable-measure-points": (lambda: mf.XVarTable.measure(MODEL, X, SCHED, points=10**9), ValueError, "points"),
    "loss_at-n_seg-0": (lambda: OBJ.loss_at(MODEL, X, 0), ValueError, "n_seg"),
    "loss_at-n_seg-2^40": (lambda: OBJ.loss_at(MODEL, X, 2**40), ValueError, "n_seg"),
    "loss_at-n_seg-float": (lambda: OBJ.loss_at(MODEL, X, 1.5), TypeError, "n_seg"),
    "objective-step-negative": (lambda: OBJ(MODEL, X, step=-5), ValueError, "step"),
    "objective-step-str": (lambda: OBJ(MODEL, X, step="1"), TypeError, "step"),
    "objective-empty-batch": (lambda: OBJ(MODEL, X[:0]), ValueError, "x"),
    "diffusion_loss-empty-batch": (lambda: mf.diffusion_loss(mf.Denoiser(lambda z, lam: z, SCHED), X[:0]),
                                   ValueError, "x"),
    "MCMObjective-teacher_steps-2^40": (lambda: mf.MCMObjective(SCHED, teacher_steps=2**40), ValueError,
                                        "teacher_steps"),
    "MCMObjective-student_steps-2^40": (lambda: mf.MCMObjective(SCHED, student_steps=2**40), ValueError,
                                        "student_steps"),
    "segment_edges-2^40": (lambda: SCHED.segment_edges(2**40), ValueError, "n"),
    "interpolate-noise_b": (lambda: editing.interpolate(MODEL, X, X[:2], 0.5), ValueError, "noise_b"),
    "interpolate-noise_a": (lambda: editing.interpolate(MODEL, [1.0], X, 0.5), TypeError, "noise_a"),
    "analytic_x_var-int": (lambda: mf.analytic_x_var(torch.tensor([1, 2])), TypeError, "logsnr_t"),
    "available_backends-unknown-op": (lambda: mf.available_backends("no_such_op"), ValueError, "op"),
    "save_checkpoint-directory-a-file": (lambda: mf.save_checkpoint(__file__, nn.Linear(1, 1), step=1), ValueError,
                                         "directory"),
    "load_checkpoint-path-int": (lambda: mf.load_checkpoint(5), TypeError, "path"),
    "load_checkpoint-device": (lambda: mf.load_checkpoint(".", device="bogus"), ValueError, "device"),
    "MCMObjective-null_label-negative": (lambda: mf.MCMObjective(SCHED, null_label=-1), ValueError, "null_label"),
    "MCMObjective-null_label-float": (lambda: mf.MCMObjective(SCHED, null_label=1.5), TypeError, "null_label"),
    "mcm_loss-weight-negative": (lambda: mf.mcm_loss(X, X, -1.0), ValueError, "weight"),
    "mcm_loss-weight-nan": (lambda: mf.mcm_loss(X, X, math.nan), ValueError, "weight"),
    "ConsistencyLoss-steps-2^40": (lambda: consistency.ConsistencyLoss(steps=2**40), ValueError, "steps"),
    "ConsistencyLoss-huber_c-bool": (lambda: consistency.ConsistencyLoss(huber_c=True), ValueError, "huber_c"),
}


@pytest.mark.parametrize("case", CALLS)
def test_each_bad_call_names_its_own_argument(case):
    call, error, name = CALLS[case]
    with pytest.raises(error) as caught:
        call()
    assert str(caught.value).startswith(f"{name}: "), str(caught.value)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------- property-based
ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(-3, 2**40), max_size=4).map(tuple),
    st.sampled_from([torch.tensor([1, 2]), torch.zeros(0), torch.tensor(math.nan), torch.zeros(2, 3, dtype=torch.int64),
                     torch.randn(5), torch.tensor([0.5, 1.5]), torch.tensor([0.2, 0.3], dtype=torch.float64)]),
)


def _cheap(value) -> bool:
    """Whether a value that may be valid is small enough to run: step counts, shapes and points."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value <= 64
    if isinstance(value, tuple):
        return all(isinstance(n, int) and n <= 64 for n in value) and len(value) <= 3
    return True


TARGETS = {  # argument -> call with that argument set to v (every other argument valid)
    "n_steps": lambda v: mf.sample(MODEL, v, shape=(2, 3)),
    "shape": lambda v: mf.sample(MODEL, 2, shape=v),
    "boundaries": lambda v: mf.sample(MODEL, 2, shape=(2, 3), boundaries=v),
    "n_seg": lambda v: OBJ.loss_at(MODEL, X, v),
    "step": lambda v: OBJ(MODEL, X, step=v),
    "n": lambda v: SCHED.segment_edges(v),
    "points": lambda v: mf.XVarTable.measure(MODEL, X, SCHED, points=v),
    "op": lambda v: mf.available_backends(v),
    "logsnr_t": lambda v: mf.analytic_x_var(v),
    "noise_a": lambda v: editing.interpolate(MODEL, v, X, 0.5),
    "t": lambda v: mf.ddim_step(X, X, v, 0.0, SCHED),
    "s": lambda v: mf.ddim_step(X, X, 1.0, v, SCHED),
    "x_var": lambda v: mf.addim_step(X, X, 1.0, 0.5, SCHED, v),
    "student_steps": lambda v: mf.MCMObjective(SCHED, student_steps=v, teacher_steps=64),
    "teacher_steps": lambda v: mf.MCMObjective(SCHED, student_steps=1, teacher_steps=v),
    "generator": lambda v: mf.sample(MODEL, 2, shape=(2, 3), generator=v),
    "guidance": lambda v: mf.sample(MODEL, 2, shape=(2, 3), guidance=v, null_cond={"label": 0}),
    "student": lambda v: OBJ(v, X),
    "prediction": lambda v: mf.Denoiser(lambda z, lam: z, SCHED, prediction=v),
    "net": lambda v: mf.Denoiser(v, SCHED),
    "multiscale": lambda v: mf.diffusion_loss(mf.Denoiser(lambda z, lam: z, SCHED), IMAGES, multiscale=v),
    "huber_eps": lambda v: mf.mcm_loss(X, X, torch.ones(4), huber_eps=v),
    "factor": lambda v: editing.super_resolve(MODEL, IMAGES, v, 1),
    "weight": lambda v: editing.slerp(X, X, v),
    "t_start": lambda v: editing.sdedit(MODEL, X, v, 1),
    "features_b": lambda v: frechet.frechet_distance(X, v),
    "projections": lambda v: distances.sliced_wasserstein(X, X, projections=v),
    "nrow": lambda v: grid.tile(IMAGES, nrow=v),
    "padding": lambda v: grid.tile(IMAGES, padding=v),
    "k": lambda v: consistency.cm_steps(v, 100),
    "total": lambda v: consistency.cm_steps(1, v),
    "mu0": lambda v: consistency.cm_ema_decay(1, 100, mu0=v),
    "decay": lambda v: ema.ema_update(nn.Linear(1, 1), nn.Linear(1, 1), v),
    "target": lambda v: ema.ema_update(v, nn.Linear(1, 1), 0.5),
    "sigmas": lambda v: consistency.cm_sample(lambda x, sigma: x, v, X),
    "x": lambda v: mf.XVarTable.measure(MODEL, v, SCHED, points=3),
}


@settings(max_examples=1000, deadline=None)
@given(name=st.sampled_from(sorted(TARGETS)), value=ANY)
def test_any_value_of_an_argument_runs_or_is_refused_naming_it(name, value):
    """Never another exception; the message starts with the argument, or (a value that fits alone but not with
    another argument) with that other argument, saying "like <argument>"."""
    assume(_cheap(value))
    try:
        TARGETS[name](value)
    except (ValueError, TypeError) as error:
        text = str(error)
        assert text.startswith((f"{name}: ", f"{name}[")) or f"like {name}" in text, (name, value, text)
