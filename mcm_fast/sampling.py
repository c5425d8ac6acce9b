"""Samplers: Algorithm 2 for multistep consistency models (math.md §5) and the teacher samplers over the
integrators of mcm_fast.integrators (DDIM, aDDIM, Euler, Heun, ancestral), with classifier-free guidance.

A model is any callable model(z_t, t, **cond) -> x_hat; the schedule comes from model.schedule unless given.
"""
from __future__ import annotations

import sys
from numbers import Real

import torch

from mcm_fast._checks import (
    MAX_STEPS,
    check_float_tensor,
    check_generator,
    check_int,
    check_range,
    check_real,
    check_shape,
    inputs_checked,
)
from mcm_fast.cuda_graphs import captured, signature
from mcm_fast.guidance import guided
from mcm_fast.integrators import INTEGRATORS
from mcm_fast.ops.steps import ddim_unchecked
from mcm_fast.schedules import GRIDS, SPACINGS, Schedule
from mcm_fast.x_var import XVarTable, x_var_at


def prepare(model, n_steps, shape, schedule, noise, generator, guidance, null_cond, cond, device=None,
           dtype=torch.float32):
    """Checks the arguments every sampler shares; returns (model, guided when guidance != 0, schedule, z_1). New
    noise (of dtype) goes on `device`, else on the device of the first tensor in cond, else on the generator's."""
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
def sample(model, n_steps: int = 4, shape=None, schedule=None, noise=None, generator=None, guidance: float = 0.0,
           null_cond: dict | None = None, boundaries: str = "t", compile: bool = False, cuda_graph: bool = False,
           **cond) -> torch.Tensor:
    """Algorithm 2: exactly n_steps model calls from z_1 = noise, DDIM jumps between the segment starts (k / S,
    or uniform in logSNR with boundaries="logsnr", as the model was trained); returns the last x_hat (math.md §5).

    guidance w > 0 needs null_cond (e.g. {"label": null_class}), unless the model has guidance distilled into it
    (model.guidance_distilled): then it is called once per step with guidance= [B]. A student of several step
    counts (model.student_steps, a tuple) gets student_steps= [B] and refuses an n_steps it was not trained
    for. compile=True runs the network through torch.compile. cuda_graph=True (CUDA tensors) captures the whole
    loop, network calls, DDIM steps and guidance, in one CUDA graph per model and call signature
    (mcm_fast.cuda_graphs); on other devices it is an error: a forced path that cannot run never falls back.
    """
    if boundaries not in SPACINGS:
        raise ValueError(f"boundaries: expected one of {SPACINGS}, got {boundaries!r}")
    network = torch.compile(model) if compile else model  # dynamo's cache is per module: compiled once
    distilled = getattr(model, "guidance_distilled", False) is True
    guided_model, schedule, z = prepare(network, n_steps, shape, schedule, noise, generator,
                                        0.0 if distilled else guidance, null_cond, cond)
    if cuda_graph and z.device.type != "cuda":
        raise ValueError(f"cuda_graph: expected CUDA tensors to capture, got noise on {z.device.type}")
    cond = {**cond, **student_inputs(model, z, n_steps, guidance if distilled else None)}
    times = schedule.falling_edges(n_steps, boundaries)

    def loop(z, cond):
        return consistency_jumps(guided_model, z, times, schedule, **cond)

    if cuda_graph:
        key = (n_steps, float(guidance), repr(null_cond), boundaries, compile, schedule, signature(z),
               tuple(sorted((k, signature(v)) for k, v in cond.items())))
        return captured(model, key, loop, z, cond)
    return loop(z, cond)


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
    is a DDIM step (integrators.endpoint_x_var): it returns x_hat.
    """
    if solver not in INTEGRATORS:
        raise ValueError(f"solver: expected one of {tuple(INTEGRATORS)}, got {solver!r}")
    number = isinstance(x_var, Real) and not isinstance(x_var, bool)
    if not (x_var == "analytic" or isinstance(x_var, XVarTable) or number):
        raise ValueError(f"x_var: expected 'analytic', a float or an XVarTable, got {x_var!r}")
    if number:
        check_range("x_var", x_var, 0.0, float("inf"))  # as addim_step: a variance, finite and >= 0
    model, schedule, z = prepare(model, n_steps, shape, schedule, noise, generator, guidance, null_cond, cond)
    times = time_grid(schedule, n_steps, ("edm" if solver == "heun" else "t") if grid is None else grid)
    with inputs_checked():
        for t_k, s_k in zip(times[:-1], times[1:]):
            t, s = _times(z, t_k), _times(z, s_k)
            x_hat = model(z, t, **cond)
            z = INTEGRATORS[solver](x_hat, z, s, schedule.logsnr_unchecked(t), schedule.logsnr_unchecked(s),
                                    model=model, cond=cond, x_var=lambda t=t: x_var_at(x_var, t, schedule),
                                    generator=generator)
    return z


def time_grid(schedule: Schedule, n_steps: int, grid) -> list[float]:
    """The n_steps + 1 falling times of a sampler: a named grid from 1 to 0, or the given times, checked."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid: expected one of {GRIDS} or a sequence of times, got {grid!r}")
        return schedule.falling_edges(n_steps, grid)
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    if not (isinstance(grid, (list, tuple)) and all(isinstance(v, Real) and not isinstance(v, bool) for v in grid)):
        raise TypeError(f"grid: expected one of {GRIDS} or a sequence of times, got {grid!r:.60}")
    times = [float(v) for v in grid]
    if len(times) != n_steps + 1 or not all(1 >= a > b >= 0 for a, b in zip(times, times[1:])):
        raise ValueError(f"grid: expected n_steps + 1 = {n_steps + 1} falling times in [0, 1], got {times!r:.80}")
    return times
