"""Classifier-free guidance (Ho & Salimans 2022): x_hat = (1 + w) model(z, t, cond) - w model(z, t, null_cond), in
one batched call on [cond, null]; used by the samplers and by Algorithm 1 when guidance is distilled."""
from __future__ import annotations

import sys

import torch

from mcm_fast._checks import batch_view, check_real


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
