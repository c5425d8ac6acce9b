"""Network parameterizations (x, eps, v, flow velocity) and the Denoiser that turns a raw network into x_hat
(math.md §1), for a network trained on any Schedule: its input is scaled to the schedule's own process, its time
input is the one it was trained with, and its output is read in that process's coefficients."""
from __future__ import annotations

import torch

from mcm_fast._checks import batch_view, check_float_tensor, check_range, compute_dtype, per_sample
from mcm_fast.schedules import Schedule, alpha_sigma


def eps_hat(x_hat, z_t, alpha_t, sigma_t):
    """eps_hat = (z_t - alpha_t x_hat) / sigma_t (math.md §1)."""
    return (z_t - alpha_t * x_hat) / sigma_t


def x_from_x(out, z_t, alpha_t, sigma_t):
    """x-prediction: x_hat = out (EDM's D(z, sigma) on an EDMSchedule)."""
    return out


def x_from_eps(out, z_t, alpha_t, sigma_t):
    """eps-prediction: x_hat = (z_t - sigma_t out) / alpha_t (unstable near t = 1, where alpha_t -> 0)."""
    return (z_t - sigma_t * out) / alpha_t


def x_from_v(out, z_t, alpha_t, sigma_t):
    """v-prediction: x_hat = alpha_t z_t - sigma_t out."""
    return alpha_t * z_t - sigma_t * out


def x_from_flow(out, z_t, alpha_t, sigma_t):
    """Flow-velocity prediction, out = eps - x: x_hat = (z_t - sigma_t out) / (alpha_t + sigma_t).

    From z_t = alpha_t x + sigma_t eps = (alpha_t + sigma_t) x + sigma_t (eps - x); on the rectified-flow path
    (alpha_t + sigma_t = 1) it is x_hat = z_t - u out.
    """
    return (z_t - sigma_t * out) / (alpha_t + sigma_t)


PREDICTIONS = {"x": x_from_x, "eps": x_from_eps, "v": x_from_v, "flow": x_from_flow}
TIME_INPUTS = ("logsnr", "t", "native")


def read_output(out: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor, schedule: Schedule, prediction: str):
    """x_hat from a network's output on the schedule's own z at the [B] logsnr: the prediction read with the
    schedule's own a and b (alpha_t and sigma_t for VP schedules), in at least float32."""
    dtype = compute_dtype(z)
    a, b = (batch_view(v.to(dtype), z) for v in schedule.native_alpha_sigma(logsnr))
    return PREDICTIONS[prediction](out, z, a, b)


class Denoiser(torch.nn.Module):
    """x_hat = den(z_t, t, **cond) from a raw network net(z, time, **cond) and a parameterization.

    z_t is the VP latent; the network sees the schedule's own z = (a / alpha_t) z_t (schedule.native_alpha_sigma;
    z_t itself for VP schedules) and lambda(t) (time_input="logsnr", the UViT's choice), t itself, or the
    schedule's own time ("native": the timestep of a DiscreteSchedule, u of a FlowSchedule, sigma of an
    EDMSchedule), as a [B] tensor in float32 (float64 when z_t is float64). Its output is read with a and b in
    place of alpha_t and sigma_t. x_hat is computed in at least float32.
    """

    def __init__(self, net, schedule: Schedule, prediction: str = "v", time_input: str = "logsnr"):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net: expected a callable net(z, time, **cond), got {type(net).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
        if not isinstance(prediction, str) or prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of {sorted(PREDICTIONS)}, got {prediction!r}")
        if prediction == "v" and not schedule.variance_preserving:
            raise ValueError(f"prediction: 'v' needs a variance-preserving schedule, got {type(schedule).__name__}")
        if not isinstance(time_input, str) or time_input not in TIME_INPUTS:
            raise ValueError(f"time_input: expected one of {TIME_INPUTS}, got {time_input!r}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.time_input = time_input

    @property
    def student_steps(self) -> tuple[int, ...] | None:
        """The step counts of a student that serves several (mf.sample passes student_steps=); None for one."""
        return getattr(self.net, "student_steps", None)

    @property
    def guidance_distilled(self) -> bool:
        """Whether the network takes the guidance scale as an input (mf.sample then calls it once per step)."""
        return getattr(self.net, "guidance_distilled", False)

    def forward(self, z_t: torch.Tensor, t, **cond) -> torch.Tensor:
        check_float_tensor("z_t", z_t)
        if not isinstance(t, torch.Tensor):  # tensors are checked by schedule.logsnr
            check_range("t", t, 0.0, 1.0)
        t = per_sample("t", t, z_t.shape[0], z_t.device)
        net_dtype = compute_dtype(z_t)
        logsnr = self.schedule.logsnr(t)
        if not self.schedule.variance_preserving:  # the schedule's own z = (a / alpha_t) z_t
            a = self.schedule.native_alpha_sigma(logsnr)[0]
            z_t = (z_t * batch_view(a / alpha_sigma(logsnr)[0], z_t)).to(z_t.dtype)
        out = self.net(z_t, self.time(t, logsnr).to(net_dtype), **cond)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"net: expected a tensor output like z_t, got {type(out).__name__}")
        if out.shape != z_t.shape:
            raise ValueError(f"net: expected an output of shape {tuple(z_t.shape)} like z_t, got {tuple(out.shape)}")
        return read_output(out, z_t, logsnr, self.schedule, self.prediction)

    def time(self, t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """The network's time input at the [B] times t (with logsnr = lambda(t)), per time_input."""
        if self.time_input == "native":
            return self.schedule.native_time(t, logsnr)
        return logsnr if self.time_input == "logsnr" else t
