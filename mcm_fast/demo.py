"""`mcm-fast demo`: the whole method on a CPU in minutes.

Trains the tiny UViT teacher on MNIST at 16x16 (v-loss, class-conditional), distills a 4-step multistep
consistency model from it (Algorithm 1 with an aDDIM teacher), writes sample grids and prints FD-MNIST (the
Frechet distance in the shipped MNIST classifier's features), precision and recall against MNIST's test
digits of the student and of the teacher at the same and at a large budget. Each stage is an ordinary run directory
under `out`, so an interrupted demo resumes where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from mcm_fast.commands.evaluate import sampler_of
from mcm_fast.data import load_dataset
from mcm_fast.metrics.evaluate import Scorer, default_features, reference_set, score
from mcm_fast.metrics.grid import save_grid
from mcm_fast.threads import governed
from mcm_fast.train.build import load_model
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

STUDENT_STEPS = 4
TEACHER_BUDGETS = (("ddim", STUDENT_STEPS), ("addim", STUDENT_STEPS), ("ddim", 64), ("addim", 64))


def run(out: str | Path = "runs/demo", teacher_iters: int | None = None, student_iters: int | None = None,
        n: int = 2000, seed: int = 0, progress: bool = True, echo=print, threads: int | None = None) -> list[dict]:
    """Runs the demo; returns the table rows {"model", "sampler", "steps", "fd_mnist", "precision", "recall",
    "seconds"}. threads: CPU threads, None: the cores other processes leave free (mcm_fast.threads)."""
    out = Path(out)
    teacher_dir, student_dir = out / "teacher", out / f"mcm{STUDENT_STEPS}"
    common = {"seed": seed, "threads": threads}
    stages = (
        ("teacher", teacher_dir,
         load_config("tiny-teacher", {**common, **({"steps": teacher_iters} if teacher_iters else {})})),
        (f"{STUDENT_STEPS}-step MCM distillation", student_dir, load_config(
            "tiny-cd", {**common, "teacher": str(teacher_dir), "objective": {"student_steps": STUDENT_STEPS},
                        **({"steps": student_iters} if student_iters else {})})),
    )
    timings = {}
    for name, directory, config in stages:
        echo(f"== {name}: {config.model} UViT on MNIST {config.data.resolution}x{config.data.resolution}, "
             f"{config.steps} steps of batch {config.optim.batch_size} -> {directory}")
        start = time.perf_counter()
        train(config, directory, progress=progress)
        timings[name] = time.perf_counter() - start
    rows, config = _score(out, teacher_dir, student_dir, n, seed, threads)
    _report(rows, _data_floor(config, n, seed), n, timings, out, echo)
    return rows


def _score(out: Path, teacher_dir: Path, student_dir: Path, n: int, seed: int, threads) -> tuple[list[dict], object]:
    """(rows, the student's config): the student and the teacher's budgets scored on the same noises and labels,
    each one's first 100 samples written as a grid."""
    teacher, teacher_kind, info = load_model(teacher_dir)
    student, student_kind, _ = load_model(student_dir)
    governed(teacher, threads), governed(student, threads)
    scorer = Scorer(student_kind.config, info, n, seed + 1)
    candidates = [("teacher", teacher, teacher_kind, sampler, steps) for sampler, steps in TEACHER_BUDGETS]
    candidates.insert(0, (f"MCM (S={STUDENT_STEPS})", student, student_kind, "ddim", STUDENT_STEPS))
    rows = []
    for label, model, kind, sampler, steps in candidates:
        start = time.perf_counter()
        with torch.no_grad():
            scores, images = scorer(sampler_of(model, kind, steps, sampler))
        rows.append({"model": label, "sampler": sampler, "steps": steps, **scores,
                     "seconds": time.perf_counter() - start})
        save_grid(images[:100], out / f"{label.split()[0].lower()}-{sampler}-{steps}.png", nrow=10, scale=4)
    return rows, student_kind.config


def _report(rows: list[dict], floor: dict, n: int, timings: dict, out: Path, echo) -> None:
    echo(f"\nFD-MNIST (lower is better), precision and recall against {n} MNIST test digits, {n} samples each; "
         f"{n} training digits score FD {floor['fd_mnist']:.2f}, precision {floor['precision']:.3f}, "
         f"recall {floor['recall']:.3f}:")
    echo(f"{'model':<12} {'sampler':<8} {'steps':>5} {'FD':>8} {'precision':>9} {'recall':>7} {'seconds':>8}")
    for row in rows:
        echo(f"{row['model']:<12} {row['sampler']:<8} {row['steps']:>5} {row['fd_mnist']:>8.2f} "
             f"{row['precision']:>9.3f} {row['recall']:>7.3f} {row['seconds']:>8.2f}")
    for line in claim(rows):
        echo(line)
    echo("training time: " + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings.items()))
    echo(f"sample grids (a column per digit 0-9): {out}/mcm-ddim-{STUDENT_STEPS}.png and {out}/teacher-*.png")


def claim(rows: list[dict]) -> list[str]:
    """The student against its teacher: how much better than the teacher at the same number of network calls
    (each integrator), and how far from the teacher at 64 steps, in FD-MNIST."""
    student, teacher = rows[0]["fd_mnist"], {(r["sampler"], r["steps"]): r["fd_mnist"] for r in rows[1:]}
    lines = [f"{STUDENT_STEPS}-step student against its teacher at {STUDENT_STEPS} steps: FD "
             f"{100 * (1 - student / teacher[sampler, STUDENT_STEPS]):.0f}% lower than with {sampler.upper()}"
             for sampler in ("ddim", "addim")]
    best = min(teacher[sampler, 64] for sampler in ("ddim", "addim"))
    lines.append(f"{STUDENT_STEPS}-step student against its teacher's best at 64 steps: FD "
                 f"{100 * (student / best - 1):+.0f}%")
    return lines


def _data_floor(config, n: int, seed: int) -> dict:
    """The scores of n real training digits against the test digits: what a perfect model would get."""
    train_data = load_dataset("mnist", resolution=config.data.resolution, split="train")
    generator = torch.Generator().manual_seed(seed + 2)
    real = train_data.batch(torch.randperm(len(train_data), generator=generator)[:n])["x"]
    return score(real, reference_set(config, n)[0]["x"], *reversed(default_features(config)))
