"""How much of an FD-MNIST difference is the metric's own noise (issue 31, item 1)? One model, several sample sets.

Each MODEL (a scored run of the backbone study: the tiny-res teacher at 8 DDIM steps and its 8-step student) is
scored on independent noises and labels (eval seeds 1, 2, 3; sample_inputs) against the same held-out MNIST test
digits, with 2000 samples (the size of every table) and with 10000 (all of MNIST's test digits). The spread over
eval seeds at 2000 samples is the smallest difference between two runs' FD that says anything; the shift from
2000 to 10000 is FD's bias at the tables' size. Scores go to --out/seed{eval seed}/{model}-n{n}/scores.json
(rerun to continue); the ledger records them as table fd_noise with the eval seed in the seed column.

    python -m experiments.fd_noise --threads 1                       # needs runs/backbone (experiments.backbone)
    python -m experiments.fd_noise --scale smoke --runs /tmp/backbone --out /tmp/fd_noise  # on its smoke runs
    python -m experiments.results add fd_noise runs/fd_noise && python -m experiments.results render
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from experiments.mnist_tables import scores_of
from mcm_fast.commands.evaluate import score_budgets

MODELS = {  # name -> (run directory under --runs, steps, sampler)
    "teacher-ddim8": ("seed0/uvit-res32x2", 8, "ddim"),
    "student-S8": ("seed0/uvit-res32x2-cd-S8", 8, "mcm"),
}
SCALES = {  # samples -> the eval seeds scored with that many
    "full": {2000: (1, 2, 3), 10000: (1, 2)},
    "smoke": {20: (1, 2), 40: (1,)},  # on the backbone study's smoke scale, in seconds
}


def table(rows: list[dict], sets: dict = SCALES["full"]) -> str:
    """Markdown: FD-MNIST per model and sample count (rows: ledger or scores rows with run and seed), each eval
    seed, their mean, spread and range."""
    lines = ["| model | samples | FD-MNIST per eval seed | mean | standard deviation | max - min |\n",
             "|---|---|---|---|---|---|\n"]
    for name in MODELS:
        for n in sets:
            found = sorted((r["seed"], r["fd_mnist"]) for r in rows if r["run"] == f"{name}-n{n}")
            if not found:
                continue
            fds = [fd for _, fd in found]
            spread = statistics.stdev(fds) if len(fds) > 1 else 0.0
            lines.append(f"| {name} | {n} | {' / '.join(f'{fd:.2f}' for fd in fds)} | {statistics.mean(fds):.2f} | "
                         f"{spread:.2f} | {max(fds) - min(fds):.2f} |\n")
    return "".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/backbone"), help="the backbone study's --out")
    parser.add_argument("--out", type=Path, default=Path("runs/fd_noise"))
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name, (run, steps, sampler) in MODELS.items():
        for n, seeds in SCALES[args.scale].items():
            for seed in seeds:
                start = time.perf_counter()
                rows = scores_of(args.out / f"seed{seed}" / f"{name}-n{n}",
                                 lambda r=run, b=(steps, sampler), n=n, s=seed: score_budgets(args.runs / r, [b], n, s))
                print(f"{name}, {n} samples, eval seed {seed}: FD-MNIST {rows[0]['fd_mnist']:.2f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
