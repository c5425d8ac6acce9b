"""Samplers: Algorithm 2 for multistep consistency models (math.md §5) and the usual integrators for
diffusion teachers (DDIM, aDDIM, Euler, Heun, ancestral), with classifier-free guidance.

A model is any callable model(z_t, t, **cond) -> x_hat; the schedule comes from model.schedule unless given.
"""
from __future__ import annotations

import sys
import weakref
from numbers import Real

import torch

from mcm_fast._checks import (
    MAX_STEPS,
    batch_view,
    check_batch,
    check_float_tensor,
    check_generator,
    check_int,
    check_range,
    check_real,
    check_shape,
    inputs_checked,
)
from mcm_fast.ops.steps import addim_unchecked, ddim_unchecked
from mcm_fast.schedules import GRIDS, SPACINGS, Schedule, alpha_sigma
from mcm_fast.solvers import analytic_x_var, endpoint_x_var, euler_step_reference, heun_step_reference

CONSISTENCY_SAMPLERS = ("mcm", "cm")


def guided(model, scale: float, null_cond: dict):
    """Classifier-free guidance: x_hat = (1 + w) model(z, t, cond) - w model(z, t, null_cond), one batched call."""
    scale = check_real("guidance", scale, -sys.float_info.max, sys.float_info.max)  # a float: big ints overflow
    if not isinstance(null_cond, dict) or not null_cond:
        raise ValueError(f"null_cond: expected a dict of the unconditional inputs (e.g. {{'label': 10}}), got "
                         f"{null_cond!r}")

    def guided_model(z, t, **cond):
        return guided_outputs(model, z, t, scale, null_cond, cond)[0]

    return guided_model


def guided_outputs(model, z, t, scale, null_cond: dict, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided x_hat, conditional x_hat) of one batched call on [z, z]: (1 + w) x_cond - w x_null, with w a
    number or a [B] tensor (a scale per example, as guidance distillation draws them). Per-example inputs in
    cond ([B] tensors) are repeated for the unconditional half; the keys of null_cond get its values there."""
    batch = z.shape[0]

    def doubled(key, value):
        if key in null_cond:
            return torch.cat([value, _null_like(null_cond[key], value)])
        per_example = isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch
        return torch.cat([value, value]) if per_example else value

    t2 = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() == 1 else t
    x_cond, x_null = model(torch.cat([z, z]), t2, **{k: doubled(k, v) for k, v in cond.items()}).split(batch)
    w = batch_view(scale.to(x_cond.dtype), x_cond) if isinstance(scale, torch.Tensor) else scale
    return (1 + w) * x_cond - w * x_null, x_cond


def _null_like(value, like: torch.Tensor) -> torch.Tensor:
    """A null-condition value broadcast like a conditioning tensor: a fill for a number (no host-to-device copy,
    so that a CUDA graph can capture it), else the tensor moved and expanded."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device, like.dtype).expand_as(like)
    return torch.full_like(like, value)


def _setup(model, n_steps, shape, schedule, noise, generator, guidance, null_cond, cond, device=None,
           dtype=torch.float32):
    """Checks the common arguments; returns (model, schedule, z_1). New noise (of dtype) goes on `device`,
    else on the device of the first tensor in cond, else on the generator's."""
    if not callable(model):
        raise TypeError(f"model: expected a callable model(z_t, t, **cond) -> x_hat, got {type(model).__name__}")
    check_int("n_steps", n_steps, 1, MAX_STEPS)
    check_generator("generator", generator)
    schedule = getattr(model, "schedule", None) if schedule is None else schedule
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a Schedule (or a model with .schedule), got {type(schedule).__name__}")
    if noise is None:
        if shape is None:
            raise ValueError("shape: expected (B, ...) when noise is not given, got None")
        if device is None:
            device = next((v.device for v in cond.values() if isinstance(v, torch.Tensor)),
                          generator.device if generator is not None else None)
        noise = torch.randn(check_shape("shape", shape), generator=generator, device=device, dtype=dtype)
    else:
        check_float_tensor("noise", noise)
        if shape is not None and check_shape("shape", shape) != tuple(noise.shape):
            raise ValueError(f"shape: expected {tuple(noise.shape)} like noise, got {tuple(shape)}")
    if not (isinstance(guidance, Real) and guidance == 0):
        model = guided(model, guidance, null_cond)
    return model, schedule, noise


def _times(z: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((z.shape[0],), t, dtype=torch.float64, device=z.device)


@torch.no_grad()
def sample(model, n_steps: int = 4, shape=None, schedule=None, noise=None, generator=None, sampler: str = "mcm",
           guidance: float = 0.0, null_cond: dict | None = None, boundaries: str = "t", compile: bool = False,
           cuda_graph: bool = False, **cond) -> torch.Tensor:
    """Algorithm 2: exactly n_steps model calls from z_1 = noise; returns the last x_hat (math.md §5).

    sampler "mcm" jumps between segment starts (k / S, or uniform in logSNR with boundaries="logsnr", as the
    model was trained) with DDIM; "cm" (Song et al. 2023) re-noises each x_hat afresh to the next time instead.
    guidance w > 0 needs null_cond (e.g. {"label": null_class}), unless the model has guidance distilled into it
    (model.guidance_distilled): then it is called once per step with guidance= [B]. A student of several step
    counts (model.student_steps, a tuple) gets student_steps= [B] and refuses an n_steps it was not trained
    for. compile=True runs the network through
    torch.compile. cuda_graph=True (CUDA tensors) captures the whole loop, network calls, DDIM steps and
    guidance, in one CUDA graph per model and call signature, cached and replayed with the weights in place
    (updates in place are seen; replaced parameter tensors are not). On other devices it is an error: a
    forced path that cannot run never falls back.
    """
    if sampler not in CONSISTENCY_SAMPLERS:
        raise ValueError(f"sampler: expected one of {CONSISTENCY_SAMPLERS}, got {sampler!r}")
    if boundaries not in SPACINGS:
        raise ValueError(f"boundaries: expected one of {SPACINGS}, got {boundaries!r}")
    network = torch.compile(model) if compile else model  # dynamo's cache is per module: compiled once
    distilled = getattr(model, "guidance_distilled", False) is True
    guided_model, schedule, z = _setup(network, n_steps, shape, schedule, noise, generator,
                                       0.0 if distilled else guidance, null_cond, cond)
    if cuda_graph and z.device.type != "cuda":
        raise ValueError(f"cuda_graph: expected CUDA tensors to capture, got noise on {z.device.type}")
    cond = {**cond, **student_inputs(model, z, n_steps, guidance if distilled else None)}
    times = schedule.segment_edges(n_steps, boundaries).flip(0).tolist()
    fresh = [torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
             for _ in range(n_steps - 1)] if sampler == "cm" else []  # drawn in the eager loop's order

    def loop(z, fresh, cond):
        return _sampling_loop(guided_model, z, times, schedule, sampler, fresh, cond)

    if cuda_graph:
        key = (n_steps, sampler, float(guidance), repr(null_cond), boundaries, compile, schedule, _signature(z),
               tuple(sorted((k, _signature(v)) for k, v in cond.items())))
        return _captured(model, key, loop, z, fresh, cond)
    return loop(z, fresh, cond)


def student_inputs(model, z: torch.Tensor, n_steps: int, guidance) -> dict:
    """The inputs of a student beyond (z_t, t, label) for a batch like z: student_steps= [B] when it serves several
    step counts (n_steps must be one of them), guidance= [B] when guidance is distilled into it (else None)."""
    inputs = {}
    steps = getattr(model, "student_steps", None)
    if isinstance(steps, tuple):
        if n_steps not in steps:
            raise ValueError(f"n_steps: expected one of {steps} (the step counts this student was trained for), "
                             f"got {n_steps!r}")
        inputs["student_steps"] = torch.full((z.shape[0],), n_steps, dtype=torch.long, device=z.device)
    if guidance is not None:
        w = check_real("guidance", guidance, -sys.float_info.max, sys.float_info.max)
        inputs["guidance"] = torch.full((z.shape[0],), w, dtype=torch.float32, device=z.device)
    return inputs


def _sampling_loop(model, z, times, schedule, sampler, fresh, cond):
    """Algorithm 2 along times ("mcm"), or Song et al.'s sampling re-noising with the given fresh noises ("cm")."""
    if sampler == "mcm":
        return consistency_jumps(model, z, times, schedule, **cond)
    x_hat = None
    with inputs_checked():
        for k, (t, s) in enumerate(zip(times[:-1], times[1:])):
            x_hat = model(z, _times(z, t), **cond)
            if s > 0:
                alpha_s, sigma_s = alpha_sigma(schedule.logsnr(s))
                z = (alpha_s * x_hat + sigma_s * fresh[k]).to(z.dtype)
    return x_hat


def _signature(value):
    """What a captured graph depends on in an input: a tensor's shape, dtype and device, or a plain value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, str(value.device))
    return ("value", repr(value))


class CapturedLoop:
    """One sampling loop captured in a CUDA graph over static input buffers (noise, fresh noises, tensor
    conditioning): a call copies its inputs in, replays the graph and returns a copy of the output."""

    def __init__(self, loop, z: torch.Tensor, fresh: list, cond: dict):
        self.z, self.fresh = z.clone(), [f.clone() for f in fresh]
        self.cond = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        side = torch.cuda.Stream(z.device)
        side.wait_stream(torch.cuda.current_stream(z.device))
        with torch.cuda.stream(side):  # warm-up off the capture: compilation, autotuning, lazy initialization
            for _ in range(2):
                loop(self.z, self.fresh, self.cond)
        torch.cuda.current_stream(z.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = loop(self.z, self.fresh, self.cond)

    def __call__(self, z: torch.Tensor, fresh: list, cond: dict) -> torch.Tensor:
        self.z.copy_(z)
        for static, value in zip(self.fresh, fresh):
            static.copy_(value)
        for key, value in cond.items():
            if isinstance(value, torch.Tensor):
                self.cond[key].copy_(value)
        self.graph.replay()
        return self.output.clone()


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {call signature: CapturedLoop}


def _captured(model, key, loop, z, fresh, cond) -> torch.Tensor:
    """Replays the graph of (model, key), capturing it on first use; graphs go when the model does."""
    try:
        graphs = _GRAPHS.setdefault(model, {})
    except TypeError:
        raise TypeError(f"model: cuda_graph=True keeps graphs per model and needs one that can be weakly referenced "
                        f"(an nn.Module or a function), got {type(model).__name__}") from None
    if key not in graphs:
        graphs[key] = CapturedLoop(loop, z, fresh, cond)
    return graphs[key](z, fresh, cond)


def consistency_jumps(model, z: torch.Tensor, times, schedule: Schedule, project=None, **cond) -> torch.Tensor:
    """Multistep consistency sampling along descending times (ending at 0): one model call per interval,
    DDIM jumps in between, x_hat passed through project (editing constraints) first; returns the last x_hat.
    The times are the caller's, checked: the loop reads nothing back from the device."""
    x_hat = None
    with inputs_checked():
        for t, s in zip(times[:-1], times[1:]):
            t_vec, s_vec = _times(z, t), _times(z, s)
            x_hat = model(z, t_vec, **cond)
            if project is not None:
                x_hat = project(x_hat)
            if s > 0:
                z = ddim_unchecked(x_hat, z, schedule.logsnr_unchecked(t_vec), schedule.logsnr_unchecked(s_vec))
    return x_hat


class XVarTable:
    """A per-t table of aDDIM's x_var = E ||x_hat(z_t, t) - x||^2 / d, measured on data, interpolated in t."""

    def __init__(self, t: torch.Tensor, x_var: torch.Tensor):
        check_float_tensor("t", t)
        check_float_tensor("x_var", x_var)
        if t.dim() != 1 or t.shape != x_var.shape or t.numel() < 2:
            raise ValueError(f"t: expected matching 1-D tensors of at least 2 points, got {tuple(t.shape)} and "
                             f"{tuple(x_var.shape)}")
        if not bool((t[1:] > t[:-1]).all()):
            raise ValueError("t: expected strictly increasing times")
        if not bool((x_var >= 0).all() & torch.isfinite(x_var).all()):
            raise ValueError("x_var: expected finite values >= 0")
        self.t, self.x_var = t.double().cpu(), x_var.double().cpu()

    @classmethod
    @torch.no_grad()
    def measure(cls, model, x: torch.Tensor, schedule: Schedule, points: int = 33, generator=None, **cond):
        """Measures the table on a batch of data x at `points` times spread evenly over [0, 1]."""
        check_int("points", points, 2, MAX_STEPS)
        check_batch("x", x, min_dim=2)
        check_generator("generator", generator)
        t = torch.linspace(0, 1, points, dtype=torch.float64)
        values = []
        for tk in t.tolist():
            alpha, sigma = schedule.alpha_sigma(tk)
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            z = (alpha * x + sigma * eps).to(x.dtype)
            err = (model(z, _times(z, tk), **cond).double() - x.double()).flatten(1).square().mean(1)
            values.append(err.mean())
        return cls(t, torch.stack(values).cpu())

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """x_var at times t (a tensor), linear between the table's points."""
        check_float_tensor("t", t, min_dim=0)
        pos = t.double().cpu()
        idx = torch.searchsorted(self.t, pos).clamp(1, len(self.t) - 1)
        lo, hi = self.t[idx - 1], self.t[idx]
        w = (pos - lo) / (hi - lo)
        return ((1 - w) * self.x_var[idx - 1] + w * self.x_var[idx]).to(t.device)


@torch.no_grad()
def sample_diffusion(model, n_steps: int, solver: str = "ddim", shape=None, schedule=None, noise=None, generator=None,
                     x_var="analytic", guidance: float = 0.0, null_cond: dict | None = None, grid=None,
                     **cond) -> torch.Tensor:
    """Samples a diffusion model with n_steps steps of DDIM, aDDIM, Euler, Heun or ancestral sampling; returns
    z_0 (alpha_0 ~ 1 - 2e-7 on the default schedule, so z_0 is the sample).

    grid: the steps' times, uniform in "t", uniform in "logsnr", or EDM's rho = 7 grid "edm" (Schedule.segment_edges),
    or n_steps + 1 falling times in [0, 1] (e.g. a diffusers scheduler's timesteps over T - 1, then 0); None is
    "edm" for Heun (near t = 1 the cosine packs a logSNR range of about 3.8 into one uniform step) and "t" otherwise.
    x_var (aDDIM only): "analytic", a float, or an XVarTable measured on data. aDDIM's last step, into t = 0,
    is a DDIM step (solvers.endpoint_x_var): it returns x_hat.
    """
    if solver not in DIFFUSION_SOLVERS:
        raise ValueError(f"solver: expected one of {DIFFUSION_SOLVERS}, got {solver!r}")
    number = isinstance(x_var, Real) and not isinstance(x_var, bool)
    if not (x_var == "analytic" or isinstance(x_var, XVarTable) or number):
        raise ValueError(f"x_var: expected 'analytic', a float or an XVarTable, got {x_var!r}")
    if number:
        check_range("x_var", x_var, 0.0, float("inf"))  # as addim_step: a variance, finite and >= 0
    model, schedule, z = _setup(model, n_steps, shape, schedule, noise, generator, guidance, null_cond, cond)
    times = time_grid(schedule, n_steps, ("edm" if solver == "heun" else "t") if grid is None else grid)
    with inputs_checked():
        for t_k, s_k in zip(times[:-1], times[1:]):
            t, s = _times(z, t_k), _times(z, s_k)
            x_hat = model(z, t, **cond)
            z = DIFFUSION_STEPS[solver](model, x_hat, z, t, s, schedule, x_var, generator, cond)
    return z


def _addim(model, x_hat, z, t, s, schedule, x_var, generator, cond):
    """aDDIM with x_var from "analytic", a float or an XVarTable, and 0 into s = 0 (solvers.endpoint_x_var)."""
    logsnr_t = schedule.logsnr_unchecked(t)
    x_var = endpoint_x_var(x_var_at(x_var, t, schedule), s)
    return addim_unchecked(x_hat, z, logsnr_t, schedule.logsnr_unchecked(s), x_var)


DIFFUSION_STEPS = {  # one step t -> s of each teacher sampler from x_hat = model(z, t)
    "ddim": lambda model, x_hat, z, t, s, schedule, x_var, generator, cond: ddim_unchecked(
        x_hat, z, schedule.logsnr_unchecked(t), schedule.logsnr_unchecked(s)),
    "addim": _addim,
    "euler": lambda model, x_hat, z, t, s, schedule, x_var, generator, cond: euler_step_reference(
        x_hat, z, schedule.logsnr_unchecked(t), schedule.logsnr_unchecked(s)),
    "heun": lambda model, x_hat, z, t, s, schedule, x_var, generator, cond: heun_step_reference(
        model, x_hat, z, s, schedule.logsnr_unchecked(t), schedule.logsnr_unchecked(s), **cond),
    "ancestral": lambda model, x_hat, z, t, s, schedule, x_var, generator, cond: _ancestral_step(
        x_hat, z, t, s, schedule, generator),
}
DIFFUSION_SOLVERS = tuple(DIFFUSION_STEPS)


def time_grid(schedule: Schedule, n_steps: int, grid) -> list[float]:
    """The n_steps + 1 falling times of a sampler: a named grid from 1 to 0, or the given times, checked."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid: expected one of {GRIDS} or a sequence of times, got {grid!r}")
        return schedule.segment_edges(n_steps, grid).flip(0).tolist()
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    if not (isinstance(grid, (list, tuple)) and all(isinstance(v, Real) and not isinstance(v, bool) for v in grid)):
        raise TypeError(f"grid: expected one of {GRIDS} or a sequence of times, got {grid!r:.60}")
    times = [float(v) for v in grid]
    if len(times) != n_steps + 1 or not all(1 >= a > b >= 0 for a, b in zip(times, times[1:])):
        raise ValueError(f"grid: expected n_steps + 1 = {n_steps + 1} falling times in [0, 1], got {times!r:.80}")
    return times


def x_var_at(x_var, t: torch.Tensor, schedule) -> torch.Tensor:
    """aDDIM's x_var at times t ([B]) from "analytic", a float or an XVarTable."""
    if isinstance(x_var, XVarTable):
        return x_var(t)
    if x_var == "analytic":
        return analytic_x_var(schedule.logsnr(t))
    return torch.full_like(t, float(x_var))


def _ancestral_step(x_hat, z_t, t, s, schedule, generator):
    """z_s ~ q(z_s | z_t, x = x_hat), the DDPM posterior: mean alpha_{t|s} sigma_s^2 / sigma_t^2 z_t +
    alpha_s sigma_{t|s}^2 / sigma_t^2 x_hat, variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2."""
    alpha_t, sigma_t = (batch_view(v, z_t) for v in alpha_sigma(schedule.logsnr(t)))
    alpha_s, sigma_s = (batch_view(v, z_t) for v in alpha_sigma(schedule.logsnr(s)))
    alpha_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    mean = alpha_ts * sigma_s**2 / sigma_t**2 * z_t + alpha_s * var_ts / sigma_t**2 * x_hat
    noise = torch.randn(z_t.shape, generator=generator, device=z_t.device, dtype=torch.float64)
    std = (var_ts * sigma_s**2 / sigma_t**2).clamp(min=0).sqrt()  # clamp: rounding at s = t, never a real negative
    return (mean + std * noise).to(z_t.dtype)
