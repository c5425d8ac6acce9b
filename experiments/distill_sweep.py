"""Distillation settings from measurement (issue 17): the demo's teacher, then CD students with one setting
changed at a time, each scored in FD-MNIST on the same 2000 noises every 250 steps, so that every curve shows
where it plateaus. The teacher is scored with DDIM and aDDIM at 4-256 steps on the same noises.

Each run is an ordinary run directory (rerun the same command and it resumes; scores are cached in
scores.json). Two processes share the work: --shard 0/2 and 1/2, each with --threads 1.

    python -m experiments.distill_sweep --out runs/sweep --shard 0/2 --threads 1
    python -m experiments.distill_sweep --out runs/sweep --report     # the table and the FD-against-steps plot
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from experiments.mnist_tables import write_scores
from mcm_fast.commands.evaluate import score_budgets
from mcm_fast.metrics.plots import plot_metric_vs_steps
from mcm_fast.train.checkpoint import latest_checkpoint
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

EVAL_N = 2000
TEACHER_BUDGETS = [(s, sampler) for sampler in ("ddim", "addim") for s in (2, 4, 8, 16, 64)] + [(256, "addim")]
BASE = {"precision": "bf16", "objective": {"weighting": "sqrt(snr+1)"}}
RUNS = {  # name: (S, steps, overrides of BASE); one setting changed at a time, most important first
    "s4": (4, 2000, {}),
    "s2": (2, 2000, {}),
    "s8": (8, 2000, {}),
    "s4-snr1": (4, 1500, {"objective": {"weighting": "snr+1"}}),
    "s4-fp32": (4, 1500, {"precision": "fp32"}),
    "s4-ema999": (4, 1500, {"optim": {"ema_decay": 0.999}}),
    "s4-noclip": (4, 1000, {"optim": {"grad_clip": 1e9}}),
    "s4-ddim": (4, 1000, {"objective": {"teacher_solver": "ddim"}}),
}


def merged(base: dict, changes: dict) -> dict:
    return {**base, **{k: {**base.get(k, {}), **v} if isinstance(v, dict) else v for k, v in changes.items()}}


def student_config(name: str, teacher_dir: Path):
    steps_s, steps, changes = RUNS[name]
    options = merged(merged(BASE, {"teacher": str(teacher_dir), "steps": steps, "eval_every": 250, "save_every": 250,
                                   "eval_samples": EVAL_N, "objective": {"student_steps": steps_s}}), changes)
    return load_config("tiny-cd", options)


def score_teacher(directory: Path) -> list[dict]:
    """FD-MNIST, precision and recall of the teacher per (steps, sampler) on the noises and labels the students'
    evaluations use (Trainer.evaluate: seed + 1); cached in scores.json, where only missing budgets are added."""
    path = directory / "scores.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    missing = [b for b in TEACHER_BUDGETS if b not in {(r["steps"], r["sampler"]) for r in rows}]
    if not missing:
        return rows
    return write_scores(path, rows + score_budgets(directory, missing, EVAL_N, seed=1))  # the teacher's seed 0 + 1


def fd_curve(directory: Path) -> list[tuple[int, float]]:
    """(step, FD-MNIST) of a run's evaluations so far, from its log."""
    log = directory / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [(row["step"], row["eval"]["fd_mnist"]) for row in rows if "eval" in row]


def report(out: Path) -> str:
    teacher = score_teacher(out / "teacher")
    budgets = sorted({steps for steps, _ in TEACHER_BUDGETS})
    lines = ["| teacher sampler | " + " | ".join(map(str, budgets)) + " |\n|---|" + "---|" * len(budgets) + "\n"]
    for sampler in ("ddim", "addim"):
        cells = {row["steps"]: f"{row['fd_mnist']:.1f}" for row in teacher if row["sampler"] == sampler}
        lines.append(f"| {sampler} | " + " | ".join(cells.get(s, "-") for s in budgets) + " |\n")
    curves = {name: fd_curve(out / name) for name in RUNS}
    steps = sorted({step for curve in curves.values() for step, _ in curve})
    lines += ["\nFD-MNIST of the EMA student after N training steps (batch 128, 2000 samples):\n\n",
              "| run | S | " + " | ".join(str(s) for s in steps) + " |\n|---|---|" + "---|" * len(steps) + "\n"]
    for name, curve in curves.items():
        if curve:
            cells = dict(curve)
            row = " | ".join(f"{cells[s]:.1f}" if s in cells else "" for s in steps)
            lines.append(f"| {name} | {RUNS[name][0]} | {row} |\n")
    rows = [{"run": name, "steps": step, "fd_mnist": fd} for name, curve in curves.items() for step, fd in curve]
    if rows:
        plot_metric_vs_steps(rows, out / "fd-vs-training-steps.png", "fd_mnist", series="run", log_metric=True,
                             title="CD students: FD-MNIST against training steps", xlabel="training steps (batch 128)")
    return "".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th run from the i-th")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report:
        index, count = (int(v) for v in args.shard.split("/"))
        teacher_dir = out / "teacher"
        teacher = load_config("tiny-teacher", {"seed": 0})  # the demo's teacher
        done = latest_checkpoint(teacher_dir)
        if done is None or int(done.name.split("-")[1]) < teacher.steps:  # a finished teacher is kept as it is
            train(teacher, teacher_dir, progress=False)
        if index == count - 1:
            score_teacher(teacher_dir)
        for name in list(RUNS)[index::count]:
            start = time.perf_counter()
            train(student_config(name, teacher_dir), out / name, progress=False)
            print(f"{name}: {fd_curve(out / name)[-1]} after {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    text = report(out)
    (out / "sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
