"""Exponential moving averages of weights: the evaluation copy every kind keeps, and Song et al.'s target network."""
from __future__ import annotations

import torch

from mcm_fast._checks import check_real


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """target <- decay target + (1 - decay) online, parameter by parameter (buffers are copied)."""
    check_real("decay", decay, 0, 1)
    for name, module in (("target", target), ("online", online)):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"{name}: expected an nn.Module, got {type(module).__name__}")
    for p_target, p_online in zip(target.parameters(), online.parameters(), strict=True):
        p_target.lerp_(p_online, 1 - decay)
    for b_target, b_online in zip(target.buffers(), online.buffers(), strict=True):
        b_target.copy_(b_online)


def ema_decay(decay: float, updates: int) -> float:
    """The EMA decay after `updates` updates: min(decay, (1 + n) / (10 + n)), so early weights fade fast."""
    return min(decay, (1 + updates) / (10 + updates))
