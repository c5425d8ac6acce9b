"""Pretrained models shipped with the package: a class-conditional MNIST teacher and two multistep consistency
students distilled from it, each one network for S = 1, 2, 4, 8 and 16 (n_steps picks it), one with classifier-
free guidance distilled in (trained by experiments/pretrained.py; scores and commands in README.md here).

    m = mf.load_pretrained("mnist-mcm")
    x = mf.sample(m, n_steps=4, shape=(16, *m.sample_shape), label=torch.arange(16) % m.num_classes)

Each model is a checkpoint directory here (EMA weights, config, data shape and its model card entry).
"""
from __future__ import annotations

from pathlib import Path

import torch

PRETRAINED_DIR = Path(__file__).parent
RENAMED = {f"mnist-mcm{s}": "mnist-mcm" for s in (1, 2, 4, 8)}  # the names of the first family (tiny UViT, one S each)


def pretrained_models() -> list[str]:
    """The names of the shipped models: ["mnist-mcm", "mnist-mcm-guided", "mnist-teacher"]."""
    return sorted(path.name for path in PRETRAINED_DIR.iterdir() if path.is_dir() and any(path.glob("step-*")))


def pretrained_path(name: str) -> Path:
    """The checkpoint directory of a shipped model; a bad name lists the available ones."""
    names = pretrained_models()
    if isinstance(name, str) and name in RENAMED:
        raise ValueError(f"name: {name!r} is now {RENAMED[name]!r}, one student for every step count (n_steps picks "
                         f"it)")
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"name: expected one of {', '.join(names)}, got {name!r}")
    return PRETRAINED_DIR / name


def load_pretrained(name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A shipped model (z_t, t, label=...) -> x_hat in eval mode, with .schedule, .sample_shape (C, H, W),
    .num_classes and .card (training command, steps and scores)."""
    from mcm_fast.train.build import load_model
    from mcm_fast.train.checkpoint import latest_checkpoint, load_checkpoint

    path = pretrained_path(name)
    model, _, info = load_model(path, device)
    model.sample_shape = tuple(info["shape"])
    model.num_classes = info["num_classes"]
    model.card = load_checkpoint(latest_checkpoint(path), device="cpu")["card"]
    return model
