"""A residual MLP for vector data (the 2-D mixtures), conditioned on the logSNR through Fourier features."""
from __future__ import annotations

import torch
from torch import nn

from mcm_fast.models.dropout import Dropout
from mcm_fast.models.embeddings import FourierEmbedding, StudentInputs


class MLPNet(nn.Module):
    """net(z [B, dim], logsnr [B], label=None) -> [B, dim]: residual blocks (LayerNorm, SiLU, dropout) with
    the time (and optional class) embedding added to every block's input. A student built with student_steps
    (a tuple of S) or guidance_distilled=True also takes student_steps= and guidance= ([B] each)."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, classes: int = 0, dropout: float = 0.0,
                 student_steps=(), guidance_distilled: bool = False):
        super().__init__()
        self.options = {"dim": dim, "hidden": hidden, "depth": depth, "classes": classes, "dropout": dropout}
        self.embed_time = nn.Sequential(FourierEmbedding(32), nn.Linear(32, hidden), nn.SiLU(),
                                        nn.Linear(hidden, hidden))
        self.embed_class = nn.Embedding(classes + 1, hidden) if classes else None  # the extra class is "null"
        self.student_inputs = StudentInputs(hidden, student_steps, guidance_distilled)
        self.student_steps = self.student_inputs.student_steps
        self.guidance_distilled = guidance_distilled
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                          Dropout(dropout)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, label: torch.Tensor | None = None,
                student_steps: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed_time(logsnr)
        if self.embed_class is not None and label is not None:
            emb = emb + self.embed_class(label)
        emb = self.student_inputs(emb, student_steps, guidance)
        h = self.inp(z.float())
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h).to(z.dtype)
