"""Feature extractors for the Frechet distance: the shipped MNIST classifier (FD-MNIST) and raw pixels.

A feature extractor is any callable images [N, C, H, W] in [-1, 1] -> features [N, F]; pass your own (for
example an Inception network for RGB data) wherever `features=` is accepted. The MNIST classifier is a small
CNN trained by experiments/train_mnist_classifier.py on MNIST's training split; its penultimate layer (128
features) defines FD-MNIST. It takes digits at any resolution (it resizes them to 32x32, and was trained on
digits down- and up-sampled from 8x8 and 16x16 too), so FD-MNIST compares models at 8, 16, 28 or 32 pixels.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open
from torch import nn

from mcm_fast._checks import check_float_tensor

CLASSIFIER_FILE = Path(__file__).with_name("mnist_classifier.safetensors")
RESOLUTION = 32


class MNISTClassifier(nn.Module):
    """Conv 32 at 32x32, conv 64 at 16x16, conv 128 at 8x8 (each followed by a 2x2 max-pool), then a linear
    layer to the 128 features and a linear head to 10 logits. About 10M multiply-adds per digit: it trains on
    2 CPU cores in minutes."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in ((1, 32), (32, 64), (64, 128)))
        self.embed = nn.Linear(128 * 4 * 4, 128)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(128, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] in [-1, 1] -> [N, 128] (before the last ReLU), resized to 32x32 first."""
        h = F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True,
                          align_corners=False) if images.shape[-2:] != (RESOLUTION, RESOLUTION) else images
        for conv in self.convs:
            h = F.max_pool2d(F.relu(conv(h)), 2)  # 32 -> 16 -> 8 -> 4
        return self.embed(h.flatten(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(F.relu(self.features(images))))


@cache
def _load(device: str) -> MNISTClassifier:
    if not CLASSIFIER_FILE.is_file():
        raise FileNotFoundError(f"{CLASSIFIER_FILE}: the shipped MNIST classifier is missing; reinstall mcm_fast "
                                "or run experiments/train_mnist_classifier.py")
    net = MNISTClassifier()
    net.load_state_dict(load_file(CLASSIFIER_FILE))
    return net.eval().requires_grad_(False).to(device)


def mnist_classifier(device="cpu") -> MNISTClassifier:
    """The shipped classifier in eval mode on device (loaded once per device; never unpickles)."""
    return _load(str(torch.device(device)))


def classifier_record() -> dict:
    """What the training script recorded with the weights: test accuracy, epochs, seed, command."""
    with safe_open(CLASSIFIER_FILE, "pt") as f:
        return json.loads(f.metadata()["record"])


@torch.no_grad()
def mnist_features(images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """FD-MNIST features [N, 128] of 1-channel digits [N, 1, H, W] in [-1, 1], in float32."""
    check_float_tensor("images", images, min_dim=4)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected [N, 1, H, W] digits, got shape {tuple(images.shape)}")
    net = mnist_classifier(images.device)
    return torch.cat([net.features(chunk.float()) for chunk in images.split(batch_size)])


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The pixels themselves, flattened: [N, C * H * W]."""
    return images.flatten(1).float()
