"""Which examples train and which score a run: one rule for the trainer, `mcm-fast eval`, bench and the demo.

The reference a run is scored against is never data it trained on: MNIST's other split, fresh draws of a 2-D
toy, a user's test file or folder (data.test_path, read as data.path is), else a fixed fraction of the user's
examples (data.holdout; folder, npz and latent data without a test_path) held out of training. The held-out examples
depend on the data and the fraction only, not on the run's seed, so a teacher and its students hold out the
same ones. `data` is a run's DataConfig (mcm_fast.train.config); errors name its dotted keys.
"""
from __future__ import annotations

import math

import torch

from mcm_fast.data.images import load_dataset
from mcm_fast.data.points import TOYS

HOLDOUT_SEED = 0
HOLDS_OUT = ("folder", "npz", "latents")  # the sources that hold data.holdout of their examples out of training
ARGUMENTS = ("path", "resolution", "split", "n", "holdout", "test_path")


def held_out(size: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, held-out) indices of `size` examples: a seeded permutation's first ceil(fraction * size) are
    held out (at least one when fraction > 0), the rest train, each in increasing order."""
    count = math.ceil(fraction * size)
    if fraction and not 0 < count < size:
        raise ValueError(f"holdout: {fraction:g} of {size} examples leaves no example to train on or to score; "
                         f"expected more examples or a smaller fraction")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return order[count:].sort().values, order[:count].sort().values


def training_data(data, seed: int):
    """The examples a run trains on: data's source less what is held out for scoring."""
    source = _load(data, data.path, seed)
    if data.name in HOLDS_OUT and data.test_path is None and data.holdout:
        return source.subset(held_out(len(source), data.holdout)[0])
    return source


def reference_data(data, seed: int):
    """(examples, description) that a run trained on `data` is scored against (see the module docstring)."""
    if data.name == "mnist":
        split = "train" if data.split == "test" else "test"
        return load_dataset("mnist", resolution=data.resolution, split=split), f"MNIST's {split} split"
    if data.name in TOYS:
        return load_dataset(data.name, n=data.n, seed=seed + 1), f"fresh draws of {data.name}"
    if data.test_path is not None:
        return _load(data, data.test_path, seed), f"data.test_path {data.test_path}"
    if not data.holdout:
        raise ValueError(f"data.holdout: is 0 and data.test_path is not set, so {data.path} has no examples held out "
                         f"of training to score against; expected a fraction > 0 or a test_path")
    source = _load(data, data.path, seed)
    return (source.subset(held_out(len(source), data.holdout)[1]),
            f"{data.holdout:g} of {data.path} held out of training")


def _load(data, path, seed: int):
    return _named(lambda: load_dataset(data.name, path=path, resolution=data.resolution, split=data.split, n=data.n,
                                       seed=seed))


def _named(load):
    """load(), with an error about one of load_dataset's arguments named by its config key (data.resolution)."""
    try:
        return load()
    except (ValueError, FileNotFoundError) as error:
        name, sep, rest = str(error).partition(":")
        if sep and name in ARGUMENTS:
            raise type(error)(f"data.{name}:{rest}") from None
        raise
