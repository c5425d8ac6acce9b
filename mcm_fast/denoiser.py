"""Network parameterizations (x, eps, v) and the Denoiser that turns a raw network into x_hat (math.md §1)."""
from __future__ import annotations

import torch

from mcm_fast._checks import batch_view, check_float_tensor, check_range, per_sample
from mcm_fast.schedules import CosineSchedule, alpha_sigma


def eps_hat(x_hat, z_t, alpha_t, sigma_t):
    """eps_hat = (z_t - alpha_t x_hat) / sigma_t (math.md §1)."""
    return (z_t - alpha_t * x_hat) / sigma_t


def v_target(x, eps, alpha_t, sigma_t):
    """v = alpha_t eps - sigma_t x, the v-prediction target (math.md §1)."""
    return alpha_t * eps - sigma_t * x


def x_from_x(out, z_t, alpha_t, sigma_t):
    """x-prediction: x_hat = out."""
    return out


def x_from_eps(out, z_t, alpha_t, sigma_t):
    """eps-prediction: x_hat = (z_t - sigma_t out) / alpha_t (unstable near t = 1, where alpha_t -> 0)."""
    return (z_t - sigma_t * out) / alpha_t


def x_from_v(out, z_t, alpha_t, sigma_t):
    """v-prediction: x_hat = alpha_t z_t - sigma_t out."""
    return alpha_t * z_t - sigma_t * out


PREDICTIONS = {"x": x_from_x, "eps": x_from_eps, "v": x_from_v}
TIME_INPUTS = ("logsnr", "t")


class Denoiser(torch.nn.Module):
    """x_hat = den(z_t, t, **cond) from a raw network net(z_t, logsnr_or_t, **cond) and a parameterization.

    The network sees lambda(t) (time_input="logsnr", the UViT's choice) or t itself, as a [B] tensor in
    float32 (float64 when z_t is float64). x_hat is computed in at least float32.
    """

    def __init__(self, net, schedule: CosineSchedule, prediction: str = "v", time_input: str = "logsnr"):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net: expected a callable net(z_t, logsnr_or_t, **cond), got {type(net).__name__}")
        if not isinstance(schedule, CosineSchedule):
            raise TypeError(f"schedule: expected a CosineSchedule, got {type(schedule).__name__}")
        if not isinstance(prediction, str) or prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of {sorted(PREDICTIONS)}, got {prediction!r}")
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
        net_dtype = torch.float64 if z_t.dtype == torch.float64 else torch.float32
        logsnr = self.schedule.logsnr(t)
        out = self.net(z_t, (logsnr if self.time_input == "logsnr" else t).to(net_dtype), **cond)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"net: expected a tensor output like z_t, got {type(out).__name__}")
        if out.shape != z_t.shape:
            raise ValueError(f"net: expected an output of shape {tuple(z_t.shape)} like z_t, got {tuple(out.shape)}")
        alpha_t, sigma_t = (batch_view(v.to(net_dtype), z_t) for v in alpha_sigma(logsnr))
        return PREDICTIONS[self.prediction](out, z_t, alpha_t, sigma_t)
