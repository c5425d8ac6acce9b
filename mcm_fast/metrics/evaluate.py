"""Sample quality of a training run: held-out reference data and the scores against it.

Images are scored by the Frechet distance and improved precision and recall in the features of a feature
extractor: the shipped MNIST classifier for MNIST (FD-MNIST), raw pixels for other data unless you pass your
own extractor; 2-D points by the sliced Wasserstein distance to fresh draws of the true distribution.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mcm_fast.data import load_dataset
from mcm_fast.data.points import TOYS
from mcm_fast.metrics.distances import sliced_wasserstein
from mcm_fast.metrics.features import mnist_features, pixel_features
from mcm_fast.metrics.frechet import frechet_distance
from mcm_fast.metrics.grid import check_output_path, save_grid
from mcm_fast.metrics.precision_recall import precision_recall
from mcm_fast.train.build import default_steps, generate, load_model


def reference_set(config, n: int) -> torch.Tensor:
    """n held-out examples for the run's data: MNIST's test split, fresh toy draws, else (folders, npz) a
    seeded random subset of the training data."""
    data = config.data
    if data.name == "mnist":
        held_out = load_dataset("mnist", resolution=data.resolution, split="test")
    elif data.name in TOYS:
        held_out = load_dataset(data.name, n=n, seed=config.seed + 1)
    else:
        held_out = load_dataset(data.name, path=data.path, resolution=data.resolution, split=data.split)
    if n > len(held_out):
        raise ValueError(f"eval_samples: expected at most {len(held_out)} (the held-out set), got {n}")
    generator = torch.Generator().manual_seed(config.seed)
    return held_out.batch(torch.randperm(len(held_out), generator=generator)[:n])["x"]


def default_features(config):
    """(name, extractor) a run's images are scored with: ("mnist", FD-MNIST features) for MNIST, else pixels."""
    return ("mnist", mnist_features) if config.data.name == "mnist" else ("pixels", pixel_features)


def score(samples: torch.Tensor, reference: torch.Tensor, features=pixel_features, name: str = "pixels") -> dict:
    """{"fd_<name>", "precision", "recall"} for images in the space of `features` (any callable images ->
    [N, F]), {"sliced_w2"} for vectors."""
    if samples.dim() == 2:
        return {"sliced_w2": sliced_wasserstein(samples.cpu(), reference.cpu(),
                                                generator=torch.Generator().manual_seed(0))}
    fake, real = features(samples).cpu(), features(reference).cpu()
    return {f"fd_{name}": frechet_distance(fake, real), **precision_recall(real, fake)}


def sample_inputs(info: dict, n: int, seed: int, device="cpu", label: int | None = None):
    """(noise [n, *shape], cond, generator) from a seed: for class-conditional models cond holds the labels
    0, 1, 2, ... (or `label` for all), so 10-wide grids show a column per class."""
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((n, *info["shape"]), generator=generator, device=device)
    classes = info["num_classes"]
    if not classes:
        if label is not None:
            raise ValueError("label: the model is unconditional, expected no label")
        return noise, {}, generator
    if label is not None and not 0 <= label < classes:
        raise ValueError(f"label: expected a class in [0, {classes - 1}], got {label}")
    labels = torch.full((n,), label, device=device) if label is not None else torch.arange(n, device=device) % classes
    return noise, {"label": labels}, generator


def sample_grid(ckpt, out, n: int = 100, n_steps: int | None = None, seed: int = 0, label: int | None = None,
                sampler: str = "addim", scale: int = 1, device: str = "cpu"):
    """Samples n images from a checkpoint's EMA model and writes them as a PNG grid; returns its path."""
    check_output_path(out)
    model, config, info = load_model(ckpt, device)
    if len(info["shape"]) != 3:
        raise ValueError(f"--ckpt: {ckpt} models {info['shape']} vectors, not images: nothing to draw")
    noise, cond, generator = sample_inputs(info, n, seed, device, label)
    steps = default_steps(config) if n_steps is None else n_steps
    images = generate(model, config, steps, noise, sampler, generator=generator, **cond)
    return save_grid(images, out, nrow=10 if info["num_classes"] == 10 else None, scale=scale)


@torch.no_grad()
def score_budgets(ckpt, budgets, n: int, seed: int, device: str = "cpu") -> list[dict]:
    """{"steps", "sampler", fd, precision, recall} of a checkpoint's EMA model per (steps, sampler) in budgets,
    every row on the same n noises and labels (sample_inputs(seed)) against n held-out examples."""
    model, config, info = load_model(ckpt, device)
    reference, (name, features) = reference_set(config, n), default_features(config)
    noise, cond, _ = sample_inputs(info, n, seed, device)
    return [{"steps": steps, "sampler": sampler, **score(generate(model, config, steps, noise, sampler, **cond),
                                                         reference, features, name)} for steps, sampler in budgets]


def evaluate_checkpoint(ckpt, steps=None, n: int = 1000, seed: int = 0, sampler: str = "addim", device: str = "cpu",
                        out=None, echo=print) -> list[dict]:
    """Scores a checkpoint's EMA model at each step count against held-out data; prints and returns the rows.

    With out, a directory, also writes eval.json (the rows), the metric against the steps (metric.png) and,
    for images, a grid of the first 100 samples per step count (samples-<steps>.png).
    """
    if out is not None:
        check_output_path(Path(out) / "eval.json")
    model, config, info = load_model(ckpt, device)
    reference = reference_set(config, n)
    name, features = default_features(config)
    rows = []
    echo(f"{ckpt}: {config.kind} {config.model}, {n} samples against held-out {config.data.name}")
    for n_steps in steps or (default_steps(config),):
        noise, cond, generator = sample_inputs(info, n, seed, device)
        start = time.perf_counter()
        samples = generate(model, config, n_steps, noise, sampler, generator=generator, **cond)
        row = {"steps": n_steps, **score(samples, reference, features, name), "seconds": time.perf_counter() - start}
        rows.append(row)
        echo("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if out is not None and samples.dim() == 4:
            save_grid(samples[:100], Path(out) / f"samples-{n_steps}.png",
                      nrow=10 if info["num_classes"] == 10 else None)
    if out is not None:
        from mcm_fast.metrics.plots import plot_metric_vs_steps

        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "eval.json").write_text(json.dumps(rows, indent=1) + "\n")
        metric = next(k for k in rows[0] if k.startswith("fd_") or k == "sliced_w2")
        plot_metric_vs_steps(rows, Path(out) / "metric.png", metric, title=f"{config.kind} {config.model}")
        echo(f"wrote {out}/eval.json, {out}/metric.png" + (" and sample grids" if rows and "fd_" in metric else ""))
    return rows
