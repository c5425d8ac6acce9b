"""Argument validation of the public functions: each error has the right type and names the argument."""
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mcm_fast as mf

SCHED = mf.CosineSchedule()
B = 2
X, Z = torch.randn(2 * B, 3, generator=torch.Generator().manual_seed(0)).split(B)
NAN, INF = math.nan, math.inf
f64 = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def zero_model(z_t, t):
    return torch.zeros_like(z_t)


# step(first, z_t, t, s, schedule) for each public step, with the name of its first tensor argument
STEPS = {
    "ddim_step": ("x_hat", lambda a, z, t, s, sch=SCHED: mf.ddim_step(a, z, t, s, sch)),
    "addim_step": ("x_hat", lambda a, z, t, s, sch=SCHED: mf.addim_step(a, z, t, s, sch, 0.1)),
    "euler_step": ("x_hat", lambda a, z, t, s, sch=SCHED: mf.euler_step(a, z, t, s, sch)),
    "inv_ddim": ("z_s", lambda a, z, t, s, sch=SCHED: mf.inv_ddim(a, z, t, s, sch)),
}

FIRST_ARG = {  # bad first argument -> exception type
    "list": ([[0.0] * 3] * B, TypeError),
    "int": (torch.zeros(B, 3, dtype=torch.int64), TypeError),
    "bool": (torch.zeros(B, 3, dtype=torch.bool), TypeError),
    "0d": (torch.tensor(0.5), ValueError),
}
Z_T = {  # bad z_t (the first argument is X) -> exception type
    "list": ([[0.0] * 3] * B, TypeError),
    "int": (torch.zeros(B, 3, dtype=torch.int32), TypeError),
    "shape-d": (torch.randn(B, 4), ValueError),
    "shape-B": (torch.randn(B + 1, 3), ValueError),
    "dtype": (Z.double(), TypeError),
    "device": (Z.to("meta"), ValueError),
}
TIME = {  # bad t or s -> exception type
    "above": (1.5, ValueError),
    "below": (-0.1, ValueError),
    "nan": (NAN, ValueError),
    "inf": (INF, ValueError),
    "tensor-above": (f64(0.5, 1.0 + 1e-9), ValueError),
    "tensor-below": (f64(-1e-9, 0.5), ValueError),
    "tensor-nan": (f64(NAN, 0.5), ValueError),
    "0d-inf": (torch.tensor(-INF), ValueError),
    "length": (f64(0.5, 0.5, 0.5), ValueError),
    "2d": (torch.full((B, 1), 0.5), ValueError),
    "device": (torch.tensor(0.5, device="meta"), ValueError),
    "list": ([0.5, 0.5], TypeError),
    "str": ("0.5", TypeError),
    "bool": (True, TypeError),
    "int-tensor": (torch.tensor([1, 1]), TypeError),
}


def step_params(cases):
    """(step, case) pairs; cases naming the first argument are a known bug for inv_ddim."""
    return [
        pytest.param(step, case, id=f"{step}-{case}")
        for step in STEPS for case in cases
    ]


@pytest.mark.parametrize("step,case", step_params(FIRST_ARG))
def test_bad_first_argument(step, case):
    name, fn = STEPS[step]
    value, error = FIRST_ARG[case]
    with pytest.raises(error, match=f"^{name}: "):
        fn(value, Z, 0.5, 0.2)


@pytest.mark.parametrize("case", Z_T)
@pytest.mark.parametrize("step", STEPS)
def test_bad_z_t(step, case):
    value, error = Z_T[case]
    with pytest.raises(error, match="^z_t: "):
        STEPS[step][1](X, value, 0.5, 0.2)


@pytest.mark.parametrize("schedule", ["cosine", None, SCHED.logsnr], ids=["str", "None", "function"])
@pytest.mark.parametrize("step", STEPS)
def test_bad_schedule(step, schedule):
    with pytest.raises(TypeError, match="^schedule: "):
        STEPS[step][1](X, Z, 0.5, 0.2, schedule)


@pytest.mark.parametrize("case", TIME)
@pytest.mark.parametrize("step", STEPS)
def test_bad_t(step, case):
    value, error = TIME[case]
    with pytest.raises(error, match="^t: "):
        STEPS[step][1](X, Z, value, 0.0)


@pytest.mark.parametrize("case", TIME)
@pytest.mark.parametrize("step", STEPS)
def test_bad_s(step, case):
    value, error = TIME[case]
    with pytest.raises(error, match="^s: (?!expected s <)"):  # a range or type error, not the order check
        STEPS[step][1](X, Z, 1.0, value)


AFTER_T = {  # (t, s, index of the first sample with s after t; None for Python floats)
    "floats": (0.3, 0.5, None),
    "from-0": (0.0, 1e-12, None),
    "per-sample": (f64(0.5, 0.5), f64(0.2, 0.6), 1),
    "float-t": (0.5, f64(0.2, 0.50001), 1),
}


@pytest.mark.parametrize("t,s,index", AFTER_T.values(), ids=AFTER_T.keys())
@pytest.mark.parametrize("step", STEPS)
def test_s_after_t(step, t, s, index):
    need = "s < t" if step == "inv_ddim" else "s <= t"
    where = "" if index is None else f" .* at index {index}"
    with pytest.raises(ValueError, match=rf"^s: expected {need}{where}"):
        STEPS[step][1](X, Z, t, s)


@pytest.mark.parametrize("t", [0.5, 0.0, 1.0, f64(0.3, 0.8)], ids=["0.5", "0", "1", "per-sample"])
def test_inv_ddim_needs_s_strictly_before_t(t):
    with pytest.raises(ValueError, match=r"^s: expected s < t"):
        mf.inv_ddim(X, Z, t, t, SCHED)


X_VAR = {  # bad x_var of addim_step -> exception type
    "negative": (-0.1, ValueError),
    "nan": (NAN, ValueError),
    "inf": (INF, ValueError),
    "-inf": (-INF, ValueError),
    "tensor-negative": (f64(0.1, -1.0), ValueError),
    "tensor-nan": (f64(NAN, 0.1), ValueError),
    "tensor-inf": (torch.tensor([0.1, INF]), ValueError),
    "0d-negative": (torch.tensor(-0.5), ValueError),
    "length": (f64(0.1, 0.1, 0.1), ValueError),
    "device": (torch.tensor(0.1, device="meta"), ValueError),
    "string": ("exact", ValueError),
    "string-case": ("Analytic", ValueError),
    "list": ([0.1, 0.1], TypeError),
    "None": (None, TypeError),
    "bool": (True, TypeError),
    "int-tensor": (torch.tensor([1, 0]), TypeError),
}


@pytest.mark.parametrize("case", X_VAR)
def test_bad_x_var(case):
    value, error = X_VAR[case]
    with pytest.raises(error, match="^x_var: "):
        mf.addim_step(X, Z, 0.5, 0.2, SCHED, value)


def test_heun_step():
    with pytest.raises(TypeError, match="^model: "):
        mf.heun_step(3, Z, 0.5, 0.2, SCHED)
    with pytest.raises(ValueError, match="^t: "):
        mf.heun_step(zero_model, Z, 1.5, 0.2, SCHED)
    with pytest.raises(ValueError, match="^s: expected s <= t"):
        mf.heun_step(zero_model, Z, 0.2, 0.5, SCHED)
    with pytest.raises(TypeError, match="^schedule: "):
        mf.heun_step(zero_model, Z, 0.5, 0.2, "cosine")


@pytest.mark.parametrize("z_t", [[[0.0] * 3] * B, torch.zeros(B, 3, dtype=torch.int64)], ids=["list", "int"])
def test_heun_step_bad_z_t(z_t):
    with pytest.raises(TypeError, match="^z_t: "):
        mf.heun_step(zero_model, z_t, 0.5, 0.2, SCHED)


# --- CosineSchedule -----------------------------------------------------------------------------------------

SCHEDULE_ARGS = {  # bad constructor keywords -> the argument the error names
    "min=max": (dict(logsnr_min=5.0, logsnr_max=5.0), "logsnr_min"),
    "min>max": (dict(logsnr_min=10.0, logsnr_max=-10.0), "logsnr_min"),
    "min-nan": (dict(logsnr_min=NAN), "logsnr_min"),
    "min-inf": (dict(logsnr_min=-INF), "logsnr_min"),
    "min-str": (dict(logsnr_min="-15"), "logsnr_min"),
    "max-inf": (dict(logsnr_max=INF), "logsnr_max"),
    "max-nan": (dict(logsnr_max=NAN), "logsnr_max"),
    "max-None": (dict(logsnr_max=None), "logsnr_max"),
    "shift+interpolate": (dict(shift=(32, 64), interpolate=(32, 64, 64)), "shift"),
    "shift-1": (dict(shift=(64,)), "shift"),
    "shift-3": (dict(shift=(32, 64, 64)), "shift"),
    "shift-number": (dict(shift=64), "shift"),
    "shift-zero": (dict(shift=(0, 64)), "shift"),
    "shift-negative": (dict(shift=(32, -64)), "shift"),
    "shift-nan": (dict(shift=(NAN, 64)), "shift"),
    "shift-bool": (dict(shift=(True, 64)), "shift"),
    "shift-str": (dict(shift=("32", 64)), "shift"),
    "interpolate-2": (dict(interpolate=(32, 64)), "interpolate"),
    "interpolate-4": (dict(interpolate=(32, 64, 64, 1)), "interpolate"),
    "interpolate-zero": (dict(interpolate=(32, 0, 64)), "interpolate"),
    "interpolate-negative": (dict(interpolate=(32, 64, -64)), "interpolate"),
    "shift-inf": (dict(shift=(INF, 64)), "shift"),
    "interpolate-inf": (dict(interpolate=(32, INF, 64)), "interpolate"),
}
WRONG_TYPES = {"min-str", "max-None", "shift-number", "shift-bool", "shift-str"}


@pytest.mark.parametrize("case", SCHEDULE_ARGS)
def test_bad_schedule_args(case):
    kwargs, name = SCHEDULE_ARGS[case]
    with pytest.raises(TypeError if case in WRONG_TYPES else ValueError, match=f"^{name}: "):
        mf.CosineSchedule(**kwargs)


SCHEDULES = [SCHED, mf.CosineSchedule(shift=(32, 64)), mf.CosineSchedule(interpolate=(32, 64, 64))]


@pytest.mark.parametrize("method", ["logsnr", "alpha_sigma"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["plain", "shift", "interpolate"])
@pytest.mark.parametrize("case", [c for c in TIME if c not in ("length", "2d", "device")])  # any shape, device
def test_schedule_bad_t(case, schedule, method):
    value, error = TIME[case]
    with pytest.raises(error, match="^t: "):
        getattr(schedule, method)(value)


# --- Denoiser -----------------------------------------------------------------------------------------------

def test_denoiser_constructor():
    with pytest.raises(TypeError, match="^net: "):
        mf.Denoiser(3, SCHED)
    with pytest.raises(TypeError, match="^schedule: "):
        mf.Denoiser(zero_model, "cosine")
    for prediction in ("y", "V", "epsilon", None):
        with pytest.raises(ValueError, match="^prediction: "):
            mf.Denoiser(zero_model, SCHED, prediction=prediction)
    for time_input in ("sigma", "T", None):
        with pytest.raises(ValueError, match="^time_input: "):
            mf.Denoiser(zero_model, SCHED, time_input=time_input)


@pytest.mark.parametrize(
    "net", [lambda z, c: z[:, :1], lambda z, c: z.unsqueeze(0), lambda z, c: z.flatten()],
    ids=["narrow", "unsqueezed", "flat"],
)
def test_denoiser_net_output_shape(net):
    with pytest.raises(ValueError, match="^net: expected an output of shape"):
        mf.Denoiser(net, SCHED)(X, 0.5)


def test_denoiser_net_output_type():
    with pytest.raises(TypeError, match="^net: expected a tensor output"):
        mf.Denoiser(lambda z, c: None, SCHED)(X, 0.5)


def test_denoiser_call():
    den = mf.Denoiser(zero_model, SCHED)
    with pytest.raises(TypeError, match="^z_t: "):
        den([[0.0] * 3] * B, 0.5)
    with pytest.raises(TypeError, match="^z_t: "):
        den(torch.zeros(B, 3, dtype=torch.int64), 0.5)
    for t in (1.5, NAN, f64(0.5, -0.5)):
        with pytest.raises(ValueError, match="^t: "):
            den(X, t)
    with pytest.raises(ValueError, match="^t: "):
        den(X, f64(0.5, 0.5, 0.5))


# --- properties ----------------------------------------------------------------------------------------------

NEGATIVE = st.floats(max_value=-math.ulp(0.0))  # below 0, down to the smallest subnormal; not -0.0
OUTSIDE_UNIT = st.one_of(NEGATIVE, st.floats(min_value=1.0, exclude_min=True), st.just(NAN))
UNIT = st.floats(min_value=0.0, max_value=1.0)
PROPERTY = settings(max_examples=50, deadline=None)


@PROPERTY
@given(t=OUTSIDE_UNIT, index=st.integers(0, B - 1), as_tensor=st.booleans())
def test_any_t_outside_unit_interval_raises(t, index, as_tensor):
    value = f64(*[t if i == index else 0.5 for i in range(B)]) if as_tensor else t
    for call in (lambda: mf.ddim_step(X, Z, value, 0.0, SCHED), lambda: SCHED.logsnr(value)):
        with pytest.raises(ValueError, match="^t: "):
            call()
    with pytest.raises(ValueError, match="^s: "):
        mf.addim_step(X, Z, 1.0, value, SCHED, 0.1)


@PROPERTY
@given(times=st.lists(st.tuples(UNIT, UNIT).map(sorted), min_size=B, max_size=B), x_var=st.floats(0.0, 1e6))
def test_any_ordered_times_are_accepted(times, x_var):
    s, t = f64(*[p[0] for p in times]), f64(*[p[1] for p in times])
    for step in ("ddim_step", "addim_step", "euler_step"):
        out = STEPS[step][1](X, Z, t, s)
        assert out.shape == X.shape and torch.isfinite(out).all(), f"{step}: z_s {out} for t={t}, s={s}"
    out = mf.addim_step(X, Z, float(t[0]), float(s[0]), SCHED, x_var)
    assert torch.isfinite(out).all(), f"addim_step: z_s {out} for x_var={x_var}"
    if (s < t).all():
        mf.inv_ddim(X, Z, t, s, SCHED)  # accepted; the result may be huge when s is within rounding of t
    else:
        with pytest.raises(ValueError, match=r"^s: expected s < t"):
            mf.inv_ddim(X, Z, t, s, SCHED)


@PROPERTY
@given(a=UNIT, b=UNIT)
def test_any_s_after_t_raises(a, b):
    assume(a != b)
    t, s = sorted((a, b))
    for step in STEPS:
        with pytest.raises(ValueError, match="^s: expected s <"):
            STEPS[step][1](X, Z, t, s)


@PROPERTY
@given(x_var=st.one_of(NEGATIVE, st.sampled_from([NAN, INF])))
def test_any_bad_x_var_raises(x_var):
    for value in (x_var, f64(0.1, x_var)):
        with pytest.raises(ValueError, match="^x_var: "):
            mf.addim_step(X, Z, 0.5, 0.2, SCHED, value)
