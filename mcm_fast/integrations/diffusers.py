"""mcm_fast inside diffusers: MCMScheduler (Algorithm 2 for a student), ADDIMScheduler (aDDIM for a diffusion
teacher), both SchedulerMixin/ConfigMixin schedulers a pipeline accepts, saves and reloads, and
teacher_from_diffusers (a diffusers UNet and its scheduler as a model for MCMObjective and mf.sample_diffusion).

Needs the optional extra: pip install -e ".[diffusers]". The schedulers take diffusers' schedule settings
(num_train_timesteps, betas, prediction_type), so `MCMScheduler.from_config(pipe.scheduler.config)` fits a
pipeline's UNet; their timesteps are t (T - 1) for the package's times t in [0, 1] (fractional where a grid
point falls between diffusers' integer timesteps; diffusers' UNets take float timesteps). With shift set (a
FlowMatchEulerDiscreteScheduler's), they run on the rectified flow instead (FlowSchedule(shift), velocity
prediction), and their timesteps are 1000 u, as SD3's transformer takes them.
"""
from __future__ import annotations

from numbers import Real

import torch

from mcm_fast._checks import MAX_STEPS, batch_view, check_float_tensor, check_int
from mcm_fast.denoiser import Denoiser, read_output
from mcm_fast.integrations.pipelines import prediction_of
from mcm_fast.integrators import INTEGRATORS
from mcm_fast.models.diffusers_nets import DiffusersNet, import_diffusers
from mcm_fast.ops.steps import ddim_step
from mcm_fast.sampling import time_grid
from mcm_fast.schedules import GRIDS, SPACINGS, DiscreteSchedule, FlowSchedule, alpha_sigma
from mcm_fast.x_var import XVarTable, x_var_at

diffusers = import_diffusers()
from diffusers import DDPMScheduler  # noqa: E402  (after the check that names the extra)
from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: E402


def schedule_from_betas(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                        beta_schedule: str = "linear", trained_betas=None) -> DiscreteSchedule:
    """The DiscreteSchedule of DDPM's betas, built by diffusers itself (linear, scaled_linear, squaredcos_cap_v2)."""
    check_int("num_train_timesteps", num_train_timesteps, 2)
    try:
        scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                                  beta_schedule=beta_schedule, trained_betas=trained_betas)
    except NotImplementedError:
        raise ValueError(f"beta_schedule: expected linear, scaled_linear or squaredcos_cap_v2, got "
                         f"{beta_schedule!r}") from None
    return DiscreteSchedule(scheduler.alphas_cumprod)


def teacher_from_diffusers(unet, scheduler) -> Denoiser:
    """A diffusers network and its scheduler as a model (z_t, t, **cond) -> x_hat: a UNet (any model whose forward
    takes (sample, timestep, class_labels)) with a DDPM-style scheduler (alphas_cumprod, config.prediction_type) on
    its DiscreteSchedule, fed the timestep t (T - 1); or a flow transformer (SD3's) with a
    FlowMatchEulerDiscreteScheduler on FlowSchedule(shift), fed 1000 u. A label condition goes in as class_labels,
    prompt embeddings as encoder_hidden_states (and pooled_projections)."""
    if not isinstance(unet, torch.nn.Module):
        raise TypeError(f"unet: expected a diffusers model (a torch.nn.Module), got {type(unet).__name__}")
    if isinstance(scheduler, diffusers.FlowMatchEulerDiscreteScheduler):
        if scheduler.config.use_dynamic_shifting:
            raise ValueError("scheduler: shifts by resolution (use_dynamic_shifting); expected a fixed shift")
        schedule = FlowSchedule(shift=float(scheduler.config.shift),
                                time_scale=float(scheduler.config.num_train_timesteps))
        return Denoiser(DiffusersNet(unet), schedule, "flow", time_input="native")
    if not hasattr(scheduler, "alphas_cumprod") or not hasattr(getattr(scheduler, "config", None), "get"):
        raise TypeError(f"scheduler: expected a diffusers scheduler with alphas_cumprod and a config, or a "
                        f"FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    prediction = prediction_of(scheduler.config.get("prediction_type", "epsilon"))
    return Denoiser(DiffusersNet(unet), DiscreteSchedule(scheduler.alphas_cumprod), prediction, time_input="native")


class _Scheduler(SchedulerMixin, ConfigMixin):
    """What both schedulers share: diffusers' betas as a DiscreteSchedule, timesteps from the package's falling
    times, and the model output read as x_hat the way Denoiser reads it."""

    order = 1
    init_noise_sigma = 1.0

    def _setup(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
               shift=None):
        if shift is None:
            self.prediction = prediction_of(prediction_type)
            self.schedule = schedule_from_betas(num_train_timesteps, beta_start, beta_end, beta_schedule,
                                                trained_betas)
            self.alphas_cumprod = torch.tensor(self.schedule.alphas_cumprod, dtype=torch.float64)
        else:  # a flow-matching model's: velocity on the rectified flow, timesteps num_train_timesteps u
            check_int("num_train_timesteps", num_train_timesteps, 1)
            self.prediction = "flow"
            self.schedule = FlowSchedule(shift=shift, time_scale=float(num_train_timesteps))
        self.num_inference_steps = None
        self.times = None  # the package's falling times, num_inference_steps + 1 of them, ending at 0
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    def _set_times(self, times: list, device) -> None:
        self.num_inference_steps = len(times) - 1
        self.times = times
        t = torch.as_tensor(times[:-1], dtype=torch.float64)
        self.timesteps = self.schedule.native_time(t, self.schedule.logsnr(t)).float().to(device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The input as it is: the pipeline's latents are the schedule's own z (VP for betas, the flow's path)."""
        return sample

    def _times_at(self, timestep, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The [B] times (t, s) of the step from timestep to the next one."""
        if self.times is None:
            raise ValueError("timestep: call set_timesteps(num_inference_steps) before step")
        check_float_tensor("sample", sample)
        match = (self.timesteps.to(sample.device) == torch.as_tensor(timestep, device=sample.device)).nonzero()
        if match.numel() != 1:
            raise ValueError(f"timestep: expected one of the scheduler's timesteps {self.timesteps.tolist()}, got "
                             f"{timestep!r}")
        index = int(match[0, 0])
        full = lambda v: torch.full((sample.shape[0],), v, dtype=torch.float64, device=sample.device)  # noqa: E731
        return full(self.times[index]), full(self.times[index + 1])

    def _x_hat(self, model_output: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_float_tensor("model_output", model_output)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: expected the shape {tuple(sample.shape)} of sample, got "
                             f"{tuple(model_output.shape)}")
        return read_output(model_output, sample, self.schedule.logsnr(t), self.schedule, self.prediction)

    def _vp(self, z: torch.Tensor, t: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """The pipeline's latent z (the schedule's own, at the [B] times t) as the VP z_t (inverse: back); the same
        tensor for VP schedules."""
        if self.schedule.variance_preserving:
            return z
        logsnr = self.schedule.logsnr(t)
        ratio = alpha_sigma(logsnr)[0] / self.schedule.native_alpha_sigma(logsnr)[0]
        return z * batch_view((1 / ratio if inverse else ratio).to(z.dtype), z)

    @staticmethod
    def _output(prev_sample, x_hat, return_dict: bool):
        if not return_dict:
            return prev_sample, x_hat
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x_hat)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _check_eta(eta) -> None:
    if eta != 0:
        raise ValueError(f"eta: expected 0 (these samplers are deterministic), got {eta!r}")


class MCMScheduler(_Scheduler):
    """Algorithm 2 (math.md §5) for a multistep consistency student in a diffusers pipeline.

    set_timesteps(S) makes the S segment starts (uniform in t, or in logSNR with boundaries="logsnr", as the
    student was trained) the timesteps; step reads the student's output as x_hat and jumps by DDIM to the next
    segment start; the last step returns x_hat itself, as mf.sample does.
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 boundaries: str = "t", shift: float | None = None):
        if boundaries not in SPACINGS:
            raise ValueError(f"boundaries: expected one of {SPACINGS}, got {boundaries!r}")
        self._setup(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, shift)

    @classmethod
    def from_settings(cls, settings: dict, boundaries: str = "t") -> MCMScheduler:
        """The MCMScheduler on the betas and prediction type of settings (a DDPM-style scheduler's config), or on the
        rectified flow with its shift (a FlowMatchEulerDiscreteScheduler's); other keys are ignored."""
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                "shift")
        return cls(**{k: settings[k] for k in keys if k in settings}, boundaries=boundaries)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """The student's S = num_inference_steps segment starts, from t = 1 down."""
        check_int("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
        self._set_times(self.schedule.falling_edges(num_inference_steps, self.config.boundaries), device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, return_dict: bool = True):
        """One step of Algorithm 2: (prev_sample, pred_original_sample = x_hat); prev_sample is x_hat at the end."""
        _check_eta(eta)
        t, s = self._times_at(timestep, sample)
        x_hat = self._x_hat(model_output, sample, t)
        if not bool(s[0] > 0):
            return self._output(x_hat, x_hat, return_dict)
        prev = self._vp(ddim_step(x_hat, self._vp(sample, t), t, s, self.schedule), s, inverse=True)
        return self._output(prev, x_hat, return_dict)


class ADDIMScheduler(_Scheduler):
    """The aDDIM sampler (math.md §3) for a diffusion teacher in a diffusers pipeline, as mf.sample_diffusion's.

    x_var: "analytic" (0.1 / (2 + SNR(t))), a number, or a table measured on data (an XVarTable, or its points
    {"t": [...], "x_var": [...]}, which is what the config saves). grid: the steps' times, "t", "logsnr" or
    "edm" (Schedule.segment_edges). The step into t = 0 is a DDIM step (integrators.endpoint_x_var).
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 grid: str = "t", x_var="analytic", shift: float | None = None):
        if grid not in GRIDS:
            raise ValueError(f"grid: expected one of {GRIDS}, got {grid!r}")
        self._setup(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, shift)
        if isinstance(x_var, XVarTable):
            self.register_to_config(x_var={"t": x_var.t.tolist(), "x_var": x_var.x_var.tolist()})
            self.x_var = x_var
        elif isinstance(x_var, dict) and set(x_var) == {"t", "x_var"}:
            self.x_var = XVarTable(torch.tensor(x_var["t"], dtype=torch.float64),
                                   torch.tensor(x_var["x_var"], dtype=torch.float64))
        elif x_var == "analytic" or (isinstance(x_var, Real) and not isinstance(x_var, bool)
                                     and 0 <= x_var < float("inf")):
            self.x_var = x_var
        else:
            raise ValueError(f"x_var: expected 'analytic', a number >= 0, an XVarTable or "
                             f"{{'t': [...], 'x_var': [...]}}, got {x_var!r:.60}")

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """num_inference_steps + 1 falling times of the grid, from t = 1 down to 0."""
        check_int("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
        self._set_times(time_grid(self.schedule, num_inference_steps, self.config.grid), device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, return_dict: bool = True):
        """One aDDIM step: (prev_sample, pred_original_sample = x_hat)."""
        _check_eta(eta)
        t, s = self._times_at(timestep, sample)
        x_hat = self._x_hat(model_output, sample, t)
        x_var = lambda: x_var_at(self.x_var, t, self.schedule).to(t.device)  # noqa: E731
        prev = INTEGRATORS["addim"](x_hat, self._vp(sample, t), s, self.schedule.logsnr(t), self.schedule.logsnr(s),
                                    x_var=x_var)
        return self._output(self._vp(prev, s, inverse=True) if bool(s[0] > 0) else prev, x_hat, return_dict)
