"""Where is the students' floor (issue 31, item 1)? One distillation setting changed at a time on the shipped
family's teacher.

Every run distills the pretrained family's teacher (experiments/pretrained.py: the tiny-res UViT, 3000 steps) of
one training seed into one any-step student (S = 1, 2, 4, 8, 16) as mnist-mcm is made, at a shorter budget (BASE:
1000 steps, the last 250 a cooldown; the shipped student's FD on 200 samples is flat from 500 steps), with one
setting of RUNS changed. Each student is scored at every S on the noises and labels the family is scored on
(EVAL_N samples, eval seed 1), so that its ratio to the teacher's best reads as issue 31's goals do, and every
250 steps at 2 steps (the goal most missed) on as many samples, so that a plateau shows. Runs are ordinary run
directories, --out/seed{N}/{run}: rerun the same command and it resumes; --runs picks some, and two processes
with disjoint --runs share the work. The ledger records them as table floor (the teacher's scores are the
pretrained table's).

    python -m experiments.pretrained --out runs/pretrained --models mnist-teacher     # the teacher, first
    python -m experiments.floor --out runs/floor --threads 1 --runs base,ddim-teacher
    python -m experiments.results add floor runs/floor && python -m experiments.results render
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.distill_sweep import merged
from experiments.pretrained import EVAL_N, STUDENT, STUDENT_STEPS, TEACHER_BUDGETS, scores
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

EVAL_STEPS = 2  # the S scored every eval_every steps
BASE = merged(STUDENT, {"steps": 1000, "cooldown": 250, "eval_every": 250, "sample_steps": EVAL_STEPS})
RUNS = {  # name: (what changed, options over BASE); the most telling first
    "base": ("-", {}),
    "ddim-teacher": ("the teacher's DDIM step in place of aDDIM (the paper's Table 4: better at 1-2 steps)",
                     {"objective": {"teacher_solver": "ddim"}}),
    "middle-4": ("two more middle blocks (4: 0.72M parameters against 0.59M), started as the identity",
                 {"model_options": {"middle_blocks": 4}}),
    "low-s-often": ("S = 1, 2, 4, 8, 16 drawn 0.3 / 0.3 / 0.2 / 0.1 / 0.1 of the time (base: uniformly)",
                    {"objective": {"steps_probs": [0.3, 0.3, 0.2, 0.1, 0.1]}}),
    "n-64-512": ("teacher steps N annealed 64 -> 512 (base: 32 -> 128)",
                 {"objective": {"teacher_steps": [64, 512, 500]}}),
    "direct": ("Direct CM: the teacher's ODE end of the segment as the target, at the same budget",
               {"kind": "direct"}),
    "l2-squared": ("the squared L2 distance in place of pseudo-Huber", {"objective": {"loss": "l2_squared"}}),
    "huber-0.03": ("pseudo-Huber epsilon 0.03 (base: 1e-4, a plain L2 norm here)",
                   {"objective": {"huber_eps": 0.03}}),
    "lr-5e-4": ("learning rate 5e-4 (base: 1e-3)", {"optim": {"lr": 5e-4}}),
    "lr-2e-3": ("learning rate 2e-3", {"optim": {"lr": 2e-3}}),
    "logsnr-edges": ("segment edges uniform in logSNR (base: in t, the paper's)",
                     {"objective": {"boundaries": "logsnr"}}),
}


@dataclass(frozen=True)
class Scale:
    eval_n: int  # samples per score (and per periodic evaluation)
    options: dict  # over BASE


SCALES = {
    "full": Scale(EVAL_N, {"eval_samples": EVAL_N}),
    "smoke": Scale(20, {"steps": 2, "cooldown": 1, "eval_every": 1, "eval_samples": 20, "data": {"resolution": 8}}),
}


def student_config(name: str, teacher: Path, seed: int, scale: Scale):
    return load_config("tiny-cd", merged(merged(merged(BASE, scale.options), RUNS[name][1]),
                                         {"teacher": str(teacher), "seed": seed}))


def fd(rows: list[dict], steps: int, sampler: str) -> float | None:
    found = [r["fd_mnist"] for r in rows if r["steps"] == steps and r["sampler"] == sampler]
    return found[-1] if found else None


def table(rows: list[dict], teacher: dict[int, list[dict]]) -> str:
    """Markdown: each run's FD-MNIST at S = 1-16 (ratio to its seed's teacher's best at 2 and 8) and its 2-step FD
    every 250 training steps. rows: the floor table's ledger rows; teacher: {seed: the teacher's score rows}."""
    lines = ["| run | changed | seed | " + " | ".join(map(str, STUDENT_STEPS)) + " | 2 steps / best | 8 steps / "
             "best | 2-step FD during training |\n", "|---|---|---|" + "---|" * (len(STUDENT_STEPS) + 3) + "\n"]
    for name, (changed, _) in RUNS.items():
        for seed in sorted({r["seed"] for r in rows if r["run"] == name}):
            mine = [r for r in rows if r["run"] == name and r["seed"] == seed]
            final = {s: fd(mine, s, "mcm") for s in STUDENT_STEPS}
            if None in final.values():
                continue
            best = min(r["fd_mnist"] for r in teacher[seed]) if teacher.get(seed) else None
            ratios = [f"{final[s] / best:.2f}x" if best else "-" for s in (2, 8)]
            curve = sorted((r["training_steps"], r["fd_mnist"]) for r in mine if r["sampler"] == "eval")
            lines.append(f"| {name} | {changed} | {seed} | " + " | ".join(f"{final[s]:.2f}" for s in STUDENT_STEPS)
                         + f" | {' | '.join(ratios)} | {' / '.join(f'{v:.1f}' for _, v in curve)} |\n")
    return "".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/floor"))
    parser.add_argument("--teachers", type=Path, default=Path("runs/pretrained"),
                        help="experiments/pretrained.py's --out: the teacher is its seed{N}/teacher")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of the teacher and the students")
    parser.add_argument("--runs", type=lambda text: text.split(","), default=list(RUNS))
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        parser.error(f"--runs: expected names among {', '.join(RUNS)}, got {', '.join(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    scale, teacher = SCALES[args.scale], args.teachers / f"seed{args.seed}" / "teacher"
    if not (teacher / "log.jsonl").is_file():
        parser.error(f"--teachers: expected a teacher run at {teacher} (python -m experiments.pretrained)")
    teacher_rows = scores(teacher, TEACHER_BUDGETS, scale.eval_n)
    for name in args.runs:
        start, directory = time.perf_counter(), args.out / f"seed{args.seed}" / name
        train(student_config(name, teacher, args.seed, scale), directory, progress=False)
        rows = scores(directory, [(s, "mcm") for s in STUDENT_STEPS], scale.eval_n)
        print(f"{name}: {[(r['steps'], round(r['fd_mnist'], 2)) for r in rows]} "
              f"({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    print(f"teacher's best: {min(r['fd_mnist'] for r in teacher_rows):.2f}")


if __name__ == "__main__":
    main()
