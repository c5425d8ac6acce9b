"""aDDIM's last step (issue 17): a teacher sampled with aDDIM whose step into t = 0 is DDIM's (the package's rule,
integrators.endpoint_x_var) against aDDIM with math.md §3's formula at every step, and plain DDIM, on the same
noises, in FD-MNIST, precision and recall. Also the per-pixel RMS that the last aDDIM step adds to x_hat.

    python experiments/addim_endpoint.py --ckpt runs/sweep/teacher --n 2000 --seed 1
"""
from __future__ import annotations

import argparse
import json

import torch

import mcm_fast as mf
from mcm_fast.commands.evaluate import sampler_of
from mcm_fast.metrics.evaluate import Scorer
from mcm_fast.train.build import load_model


@torch.no_grad()
def addim_every_step(model, n_steps: int, noise: torch.Tensor, **cond) -> tuple[torch.Tensor, float]:
    """aDDIM (analytic x_var) with the formula at every step, into t = 0 too; returns (z_0, the per-pixel RMS of
    z_0 - x_hat, what the last step adds)."""
    z, schedule = noise, model.schedule
    for k in range(n_steps, 0, -1):
        t = torch.full((z.shape[0],), k / n_steps, dtype=torch.float64)
        x_hat = model(z, t, **cond)
        z = mf.addim_step(x_hat, z, t, (k - 1) / n_steps, schedule, "analytic")
    return z, (z - x_hat).square().mean().sqrt().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="runs/sweep/teacher")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16])
    args = parser.parse_args(argv)
    model, kind, info = load_model(args.ckpt)
    scorer = Scorer(kind.config, info, args.n, args.seed)
    rows = []
    for steps in args.steps:
        for sampler in ("ddim", "addim"):
            with torch.no_grad():
                scores, _ = scorer(sampler_of(model, kind, steps, sampler))
            rows.append({"steps": steps, "sampler": sampler, **scores})
        added = {}

        def formula_into_zero(noise, generator, steps=steps, added=added, **cond):
            images, added["rms"] = addim_every_step(model, steps, noise, **cond)
            return images

        scores, _ = scorer(formula_into_zero)
        rows.append({"steps": steps, "sampler": "addim, formula into t = 0", "last_step_rms": added["rms"], **scores})
        for row in rows[-3:]:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
