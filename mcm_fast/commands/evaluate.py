"""`mcm-fast sample` and `mcm-fast eval`, and score_budgets for the experiments: a checkpoint's EMA model
sampled the way its kind samples (train.kinds) and scored by the one pipeline of metrics.evaluate.Scorer."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mcm_fast.metrics.evaluate import Scorer, decoder, prompts_of, reference_set, sample_inputs
from mcm_fast.metrics.grid import check_output_path, save_grid
from mcm_fast.threads import governed
from mcm_fast.train.build import load_model


def sampler_of(model, kind, n_steps: int, sampler: str = "addim", **guide):
    """generate(noise, generator, **cond) -> samples of model with n_steps calls as its kind samples (guided with
    guide's guidance and null_cond), as Scorer takes it."""
    return lambda noise, generator, **cond: kind.sample(model, n_steps, noise, sampler, generator=generator, **guide,
                                                        **cond)


def sample_grid(ckpt, out, n: int = 100, n_steps: int | None = None, seed: int = 0, label: int | None = None,
                sampler: str = "addim", scale: int = 1, device: str = "cpu", guidance: float = 0.0,
                threads: int | None = None):
    """Samples n images from a checkpoint's EMA model and writes them as a PNG grid; returns its path (a text-
    conditioned model draws for held-out examples' prompts, its latents decoded). threads: CPU threads, None: the
    cores other processes leave free (mcm_fast.threads)."""
    check_output_path(out)
    model, kind, info = load_model(ckpt, device)
    governed(model, threads)
    if len(info["shape"]) != 3:
        raise ValueError(f"--ckpt: {ckpt} models {info['shape']} vectors, not images: nothing to draw")
    prompts = prompts_of(reference_set(kind.config, n, "--n")[0]) if "text" in info else None
    noise, cond, generator = sample_inputs(info, n, seed, device, label, prompts)
    steps = kind.default_steps() if n_steps is None else n_steps
    images = kind.sample(model, steps, noise, sampler, generator=generator, **kind.guidance_inputs(guidance), **cond)
    decode = decoder(kind.config)
    images = images if decode is None else decode(images)
    return save_grid(images, out, nrow=10 if info["num_classes"] == 10 else None, scale=scale)


@torch.no_grad()
def score_budgets(ckpt, budgets, n: int, seed: int, device: str = "cpu") -> list[dict]:
    """{"steps", "sampler", fd, precision, recall} of a checkpoint's EMA model per (steps, sampler) in budgets,
    every row on the same n noises and labels (sample_inputs(seed)) against n held-out examples. A budget
    (steps, sampler, w) samples with guidance w, and its row says "guidance": w."""
    model, kind, info = load_model(ckpt, device)
    scorer = Scorer(kind.config, info, n, seed, device)
    rows = []
    for steps, sampler, *w in budgets:
        guide = kind.guidance_inputs(w[0]) if w else {}
        scores = scorer(sampler_of(model, kind, steps, sampler, **guide))[0]
        rows.append({"steps": steps, "sampler": sampler, **({"guidance": w[0]} if w else {}), **scores})
    return rows


def evaluate_checkpoint(ckpt, steps=None, n: int = 1000, seed: int = 0, sampler: str = "addim", device: str = "cpu",
                        out=None, echo=print, guidance: float = 0.0, threads: int | None = None) -> list[dict]:
    """Scores a checkpoint's EMA model at each step count against held-out data; prints and returns the rows.

    With out, a directory, also writes eval.json (the rows), the metric against the steps (metric.png) and,
    for images, a grid of the first 100 samples per step count (samples-<steps>.png). threads: as sample_grid's.
    """
    if out is not None:
        check_output_path(Path(out) / "eval.json")
    model, kind, info = load_model(ckpt, device)
    config = kind.config
    governed(model, threads)
    scorer = Scorer(config, info, n, seed, device, what="--n")
    rows = []
    echo(f"{ckpt}: {config.kind} {config.model}, {n} samples against {n} examples of {scorer.reference_name}")
    for n_steps in steps or (kind.default_steps(),):
        start = time.perf_counter()
        scores, samples = scorer(sampler_of(model, kind, n_steps, sampler, **kind.guidance_inputs(guidance)))
        row = {"steps": n_steps, **scores, "seconds": time.perf_counter() - start, "reference": scorer.reference_name}
        rows.append(row)
        echo("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                       if k != "reference"))
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
