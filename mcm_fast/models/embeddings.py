"""Embeddings of what a network is conditioned on: Fourier features of the logSNR, and what a student takes
beyond (z_t, t, label): its step count S when one network serves several S, and the guidance scale w when
classifier-free guidance was distilled into it. Both are added to the time embedding, and both start at zero,
so that a student initialized from its teacher computes the teacher's function at step 0 for every S and w.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class FourierEmbedding(nn.Module):
    """[sin, cos](2 pi f_k lambda / 30) for fixed log-spaced frequencies: smooth in the logSNR over [-15, 15]."""

    def __init__(self, features: int = 32):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(64), features // 2)), persistent=False)

    def forward(self, logsnr: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * logsnr[:, None].float() / 30 * self.freqs  # [B, F/2]
        return torch.cat([angle.sin(), angle.cos()], dim=1)


def check_student_steps(student_steps) -> tuple[int, ...]:
    """The step counts of a multi-step student as a tuple of distinct integers >= 1 (a list from JSON too)."""
    if not isinstance(student_steps, (tuple, list)) or not student_steps or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in student_steps):
        raise ValueError(f"student_steps: expected a non-empty tuple of integers >= 1, got {student_steps!r}")
    if len(set(student_steps)) != len(student_steps):
        raise ValueError(f"student_steps: expected distinct step counts, got {student_steps!r}")
    return tuple(student_steps)


class StudentInputs(nn.Module):
    """emb + E[index of S in student_steps] + MLP(Fourier(w)): what a multi-step or guidance-distilled student adds
    to its time embedding; the identity for a plain student (student_steps=(), guidance=False)."""

    def __init__(self, channels: int, student_steps=(), guidance: bool = False, fourier_features: int = 32):
        super().__init__()
        self.student_steps = check_student_steps(student_steps) if student_steps else None
        if not isinstance(guidance, bool):
            raise TypeError(f"guidance_distilled: expected a bool, got {guidance!r}")
        self.guidance_distilled = guidance
        self.embed_steps = None
        if self.student_steps:
            self.register_buffer("steps", torch.tensor(self.student_steps), persistent=False)
            self.embed_steps = nn.Embedding(len(self.student_steps), channels)
            nn.init.zeros_(self.embed_steps.weight)
        self.embed_guidance = None
        if guidance:
            self.embed_guidance = nn.Sequential(FourierEmbedding(fourier_features),
                                                nn.Linear(fourier_features, channels), nn.SiLU(),
                                                nn.Linear(channels, channels))
            nn.init.zeros_(self.embed_guidance[-1].weight)
            nn.init.zeros_(self.embed_guidance[-1].bias)

    def forward(self, emb: torch.Tensor, student_steps: torch.Tensor | None,
                guidance: torch.Tensor | None) -> torch.Tensor:
        batch = emb.shape[0]
        if self.embed_steps is None:
            if student_steps is not None:
                raise ValueError("student_steps: this network was built for one step count (no student_steps input)")
        else:
            _check_input("student_steps", student_steps, batch, emb.device, integer=True)
            # the position of each example's S in the tuple (mf.sample and the objective refuse a value not in it)
            index = (student_steps[:, None] == self.steps).int().argmax(1)
            emb = emb + self.embed_steps(index).to(emb.dtype)
        if self.embed_guidance is None:
            if guidance is not None:
                raise ValueError("guidance: this network was not trained with guidance as an input (guidance_distilled "
                                 "is False); mf.sample guides it with two calls per step instead")
        else:
            _check_input("guidance", guidance, batch, emb.device, integer=False)
            emb = emb + self.embed_guidance(guidance).to(emb.dtype)
        return emb


def _check_input(name: str, value, batch: int, device: torch.device, integer: bool) -> None:
    kinds = (torch.int64, torch.int32) if integer else (torch.float32, torch.float64)
    if not isinstance(value, torch.Tensor) or value.dtype not in kinds or value.shape != (batch,):
        raise ValueError(f"{name}: expected a [{batch}] {'integer' if integer else 'float'} tensor (one per example), "
                         f"got {value!r:.80}")
    if value.device != device:
        raise ValueError(f"{name}: expected device {device} like z, got {value.device}")
