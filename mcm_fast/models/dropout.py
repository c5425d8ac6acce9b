"""Dropout whose masks can be shared between two forward passes: Algorithm 1's reference call f(z_s, s) and
the student call f(z_t, t) must see the same masks (as in improved consistency training), and unlike a
forked RNG state this compiles into one graph."""
from __future__ import annotations

import torch
from torch import nn

_TAPES: list[MaskTape] = []  # the active tape, innermost last


class MaskTape:
    """Records the dropout masks of one forward pass; after replay(), hands them out again in the same order."""

    def __init__(self):
        self.masks: list[torch.Tensor] = []
        self.position: int | None = None  # None while recording

    def replay(self) -> None:
        self.position = 0

    def mask(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if self.position is None:
            keep = torch.rand_like(x) >= p
            self.masks.append(keep)
            return keep
        if self.position >= len(self.masks) or self.masks[self.position].shape != x.shape:
            raise RuntimeError("dropout: the replayed pass differs from the recorded one (expected the same "
                               "dropout layers on inputs of the same shapes)")
        keep = self.masks[self.position]
        self.position += 1
        return keep

    def __enter__(self) -> MaskTape:
        _TAPES.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _TAPES.remove(self)


class Dropout(nn.Dropout):
    """nn.Dropout (zeroes with probability p, scales by 1 / (1 - p) while training) that draws its masks from
    the active MaskTape, if any."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_TAPES and self.training and self.p > 0):
            return super().forward(x)
        return x * _TAPES[-1].mask(x, self.p) / (1 - self.p)


def foreign_dropout(model) -> list[str]:
    """Names of the modules of model in training mode that drop at random outside a MaskTape's reach."""
    if not isinstance(model, nn.Module):
        return []
    return [name for name, m in model.named_modules() if m.training and isinstance(m, nn.modules.dropout._DropoutNd)
            and not isinstance(m, Dropout) and m.p > 0]
