"""The paper's tables at MNIST scale (issue 10), class-conditional, scored in FD-MNIST with precision and recall.

Per seed, one teacher (the tiny UViT, v-loss), then students distilled or trained from it:
  a. Table 1: the teacher (aDDIM at many steps; DDIM and aDDIM at 1-16) against MCM CD and CT at S = 1-16;
  b. Table 4: CD with a DDIM teacher integrator against the aDDIM one (the "cd" rows of a);
  c. Table 2: annealed against fixed teacher steps;
  d. Direct CM against MCM CD at the same budget: ODE error and FD side by side;
  e. Song et al.'s consistency distillation at 1 and 2 steps;
  f. CT from random initialization against CT from the teacher; segment edges uniform in logSNR against
     uniform in t; weighting snr+1 (the paper's) against sqrt(snr+1) (the default).
Every run is an ordinary run directory under --out (checkpointed, so an interrupted run resumes) with its
scores in scores.json, so rerunning the script continues where it stopped. Several processes may run one seed:
each trains the runs no other live process holds (a lock per run directory, released when its process ends,
killed too). The tables (mean and standard deviation over seeds) go to --out/tables.md and the plots to
--out/*.png; `python -m experiments.results add tables runs/tables` records the scores (experiments/results.py).

    python experiments/mnist_tables.py                                # every table, 3 seeds, in runs/tables
    python experiments/mnist_tables.py --scale smoke --out /tmp/tables  # the pipeline end to end in minutes
    python experiments/mnist_tables.py --seeds 2 --threads 1 &          # twice: two cores share one seed
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mcm_fast.commands.evaluate import sampler_of
from mcm_fast.metrics.evaluate import Scorer, sample_inputs
from mcm_fast.metrics.ode_error import ode_error
from mcm_fast.metrics.plots import plot_metric_vs_steps, plot_training_curves
from mcm_fast.train.build import load_model
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train


@dataclass(frozen=True)
class Scale:
    resolution: int
    teacher_iters: int
    student_iters: int
    eval_n: int
    seeds: tuple
    student_steps: tuple = (1, 2, 4, 8, 16)
    teacher_steps: tuple = (32, 128)  # annealed from start to end over the student's iterations
    teacher_budget: int = 256  # aDDIM steps of the teacher's reference row
    ode_n: int = 200  # noises for the ODE error
    ode_teacher_steps: int = 512
    direct_steps: tuple = (8,)  # S of the Direct CM runs: its target solves n_seg teacher steps per example
    eval_every: int = 0  # students: FD-MNIST on eval_samples every so many steps (the plot of FD against steps)
    extra: dict = field(default_factory=dict)


SCALES = {
    # students past their plateau (runs/sweep: FD-MNIST flat from about 1500 steps at S = 2-8); 2000 samples
    "full": Scale(resolution=16, teacher_iters=1200, student_iters=2000, eval_n=2000, seeds=(0, 1, 2), eval_every=250),
    "smoke": Scale(resolution=8, teacher_iters=2, student_iters=2, eval_n=20, seeds=(0,), student_steps=(1, 2),
                   teacher_steps=(2, 4), teacher_budget=4, ode_n=4, ode_teacher_steps=4, direct_steps=(2,),
                   eval_every=1),
}


@dataclass(frozen=True)
class Run:
    table: str  # which tables read it
    name: str
    kind: str
    steps: int  # the student's S (sampling steps)
    options: dict = field(default_factory=dict)  # config overrides


def plan(scale: Scale) -> list[Run]:
    """Every student run of one seed."""
    runs = []
    for s in scale.student_steps:
        runs += [Run("a b c", f"cd-S{s}", "cd", s), Run("a", f"ct-S{s}", "ct", s),
                 Run("b", f"cd-ddim-S{s}", "cd", s, {"objective": {"teacher_solver": "ddim"}})]
    for s in scale.student_steps[1:4]:
        runs.append(Run("c", f"cd-fixed-S{s}", "cd", s, {"objective": {"teacher_steps": scale.teacher_steps[1]}}))
    mid = scale.student_steps[min(2, len(scale.student_steps) - 1)]
    runs += [Run("f", f"ct-random-S{mid}", "ct", mid, {"init": "random"}),
             Run("f", f"cd-logsnr-S{mid}", "cd", mid, {"objective": {"boundaries": "logsnr"}}),
             Run("f", f"cd-snr1-S{mid}", "cd", mid, {"objective": {"weighting": "snr+1"}})]
    # last: tables d and e need one seed (issue 17), the others three
    runs += [Run("d", f"direct-S{s}", "direct", s) for s in scale.direct_steps]
    runs.append(Run("e", "song-cd", "cm", 2, {"init": "teacher"}))
    return runs


def teacher_config(scale: Scale, seed: int):
    return load_config("tiny-teacher",
                       {"seed": seed, "steps": scale.teacher_iters, "data": {"resolution": scale.resolution},
                                        "eval_samples": min(200, scale.eval_n)})


def student_config(scale: Scale, seed: int, run: Run, teacher_dir: Path):
    objective = {"student_steps": run.steps,
                 "teacher_steps": [*scale.teacher_steps, scale.student_iters]}
    options = {"seed": seed, "kind": run.kind, "teacher": str(teacher_dir), "steps": scale.student_iters,
               "data": {"resolution": scale.resolution}, "eval_samples": min(200, scale.eval_n), "objective": objective,
               "sample_steps": run.steps, "eval_every": scale.eval_every}
    for key, value in run.options.items():
        options[key] = {**options.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config("tiny-cd", options)


def scores_of(directory: Path, compute) -> list[dict]:
    """The rows in directory/scores.json, computed (and written) the first time."""
    path = directory / "scores.json"
    if path.is_file():
        return json.loads(path.read_text())
    return write_scores(path, compute())


def write_scores(path: Path, rows: list[dict]) -> list[dict]:
    """Writes rows to path as JSON atomically: a run killed while writing leaves no half-written scores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(rows, indent=1) + "\n")
    partial.replace(path)
    return rows


def evaluate(directory: Path, steps_and_samplers, scale: Scale, seed: int,
             ode_teacher: Path | None = None) -> list[dict]:
    """FD-MNIST, precision and recall of a run's EMA model per (steps, sampler); with ode_teacher, the ODE error."""
    model, kind, info = load_model(directory)
    scorer = Scorer(kind.config, info, scale.eval_n, seed + 1000)
    rows = []
    for steps, sampler in steps_and_samplers:
        start = time.perf_counter()
        with torch.no_grad():
            scores, _ = scorer(sampler_of(model, kind, steps, sampler))
        row = {"steps": steps, "sampler": sampler, **scores, "seconds": time.perf_counter() - start}
        if ode_teacher is not None:
            teacher, _, _ = load_model(ode_teacher)
            noise, cond, _ = sample_inputs(info, scale.ode_n, seed + 2000)
            with torch.no_grad():
                row["ode_error"] = ode_error(model, teacher, noise, steps, teacher_steps=scale.ode_teacher_steps,
                                             **cond)
        rows.append(row)
    return rows


@contextlib.contextmanager
def claim(directory: Path, wait: bool):
    """Yields whether this process holds directory's lock; without wait, False at once while another live process
    holds it. The operating system releases the lock when its process ends, killed too, so none is ever stale."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def run_seed(scale: Scale, seed: int, out: Path, echo=print) -> dict[str, list[dict]]:
    """Trains and scores the teacher and every student of one seed that no other process holds; returns {run name:
    score rows} of the runs scored."""
    root = out / f"seed{seed}"
    teacher_dir = root / "teacher"
    pending = [run for run in plan(scale) if not (root / run.name / "scores.json").is_file()]
    if pending or not (teacher_dir / "scores.json").is_file():
        with claim(teacher_dir, wait=True):  # another process training it: wait for it
            echo(f"== seed {seed}: teacher -> {teacher_dir}")
            train(teacher_config(scale, seed), teacher_dir, progress=False)
            budgets = [(s, sampler) for sampler in ("ddim", "addim") for s in scale.student_steps]
            budgets.append((scale.teacher_budget, "addim"))
            scores_of(teacher_dir, lambda: evaluate(teacher_dir, budgets, scale, seed))
    for run in pending:
        directory = root / run.name
        steps = [(1, "mcm"), (2, "mcm")] if run.kind == "cm" else [(run.steps, "mcm")]
        ode = teacher_dir if run.table == "d" or run.name == f"cd-S{scale.direct_steps[0]}" else None
        with claim(directory, wait=False) as mine:
            if not mine:
                echo(f"== seed {seed}: {run.name} is another process's")
            elif not (directory / "scores.json").is_file():  # not scored by another process since
                echo(f"== seed {seed}: {run.name} ({run.kind}, S = {run.steps}) -> {directory}")
                train(student_config(scale, seed, run, teacher_dir), directory, progress=False)
                write_scores(directory / "scores.json", evaluate(directory, steps, scale, seed, ode))
    return scored(scale, seed, out)


def scored(scale: Scale, seed: int, out: Path) -> dict[str, list[dict]]:
    """{run name: score rows} of the runs of a seed scored so far (another process may still be running it)."""
    root = out / f"seed{seed}"
    names = ["teacher"] + [run.name for run in plan(scale)]
    return {name: json.loads((root / name / "scores.json").read_text()) for name in names
            if (root / name / "scores.json").is_file()}


def summarize(per_seed: list[dict[str, list[dict]]], key: str) -> dict[tuple[str, int, str], tuple[float, float, int]]:
    """{(run, steps, sampler): (mean, standard deviation, number of seeds)} of one score."""
    values = {}
    for results in per_seed:
        for run, rows in results.items():
            for row in rows:
                if key in row:
                    values.setdefault((run, row["steps"], row["sampler"]), []).append(row[key])
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in values.items()}


def cell(stats, key, digits: int = 1) -> str:
    """mean ± standard deviation over seeds; "(1 seed)" and the like where fewer seeds than the table's have it."""
    if key not in stats:
        return "-"
    mean, spread, count = stats[key]
    seeds = max(n for _, _, n in stats.values())
    if count == 1:
        return f"{mean:.{digits}f}" + (" (1 seed)" if seeds > 1 else "")
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" + (f" ({count} seeds)" if count < seeds else "")


def tables(per_seed, scale: Scale) -> str:
    """Tables a-f as markdown: FD-MNIST mean ± standard deviation over seeds (and ODE error, precision, recall)."""
    fd, precision, recall = (summarize(per_seed, k) for k in ("fd_mnist", "precision", "recall"))
    ode = summarize(per_seed, "ode_error")
    ss = scale.student_steps
    head = "| | " + " | ".join(f"S = {s}" for s in ss) + " |\n|---|" + "---|" * len(ss) + "\n"
    title = (f"### a. Teacher against MCM (FD-MNIST; the teacher with {scale.teacher_budget} aDDIM steps: "
             f"{cell(fd, ('teacher', scale.teacher_budget, 'addim'))})\n")
    lines = [title, head]
    rows = [("teacher, DDIM", lambda s: ("teacher", s, "ddim")), ("teacher, aDDIM", lambda s: ("teacher", s, "addim")),
            ("MCM CD", lambda s: (f"cd-S{s}", s, "mcm")), ("MCM CT", lambda s: (f"ct-S{s}", s, "mcm"))]
    lines += [f"| {label} | " + " | ".join(cell(fd, key(s)) for s in ss) + " |\n" for label, key in rows]
    lines += ["\n### b. The teacher's integrator in CD (FD-MNIST)\n", head]
    for label, prefix in (("DDIM teacher", "cd-ddim"), ("aDDIM teacher", "cd")):
        lines.append(f"| {label} | " + " | ".join(cell(fd, (f"{prefix}-S{s}", s, "mcm")) for s in ss) + " |\n")
    lines += ["\n### c. Annealed against fixed teacher steps (FD-MNIST)\n", head]
    for label, prefix in ((f"annealed {scale.teacher_steps[0]} -> {scale.teacher_steps[1]}", "cd"),
                          (f"fixed {scale.teacher_steps[1]}", "cd-fixed")):
        lines.append(f"| {label} | " + " | ".join(cell(fd, (f"{prefix}-S{s}", s, "mcm")) for s in ss) + " |\n")
    lines += ["\n### d. Direct CM against MCM at the same budget\n",
              "| S | method | ODE error | FD-MNIST | precision | recall |\n|---|---|---|---|---|---|\n"]
    for s in scale.direct_steps:
        for label, run in (("Direct CM", f"direct-S{s}"), ("MCM CD", f"cd-S{s}")):
            key = (run, s, "mcm")
            lines.append(f"| {s} | {label} | {cell(ode, key, 3)} | {cell(fd, key)} | "
                         f"{cell(precision, key, 3)} | {cell(recall, key, 3)} |\n")
    lines += ["\n### e. Song et al.'s consistency distillation (FD-MNIST)\n", "| steps | FD-MNIST |\n|---|---|\n"]
    lines += [f"| {s} | {cell(fd, ('song-cd', s, 'mcm'))} |\n" for s in (1, 2)]
    mid = ss[min(2, len(ss) - 1)]
    lines += [f"\n### f. Open questions at S = {mid} (FD-MNIST)\n", "| variant | FD-MNIST |\n|---|---|\n"]
    for label, run in (("CT from the teacher", f"ct-S{mid}"), ("CT from random init", f"ct-random-S{mid}"),
                       ("CD, segments uniform in t", f"cd-S{mid}"),
                       ("CD, segments uniform in logSNR", f"cd-logsnr-S{mid}"),
                       ("CD, weighting sqrt(snr+1) (default)", f"cd-S{mid}"),
                       ("CD, weighting snr+1 (paper)", f"cd-snr1-S{mid}")):
        lines.append(f"| {label} | {cell(fd, (run, mid, 'mcm'))} |\n")
    return "".join(lines)


def plots(per_seed, scale: Scale, out: Path) -> None:
    fd = summarize(per_seed, "fd_mnist")
    rows = []
    for label, key in (("teacher, DDIM", lambda s: ("teacher", s, "ddim")),
                       ("teacher, aDDIM", lambda s: ("teacher", s, "addim")),
                       ("MCM CD", lambda s: (f"cd-S{s}", s, "mcm")), ("MCM CT", lambda s: (f"ct-S{s}", s, "mcm"))):
        rows += [{"series": label, "steps": s, "fd_mnist": fd[key(s)][0], "spread": fd[key(s)][1]}
                 for s in scale.student_steps if key(s) in fd]
    plot_metric_vs_steps(rows, out / "fd-vs-steps.png", "fd_mnist", series="series",
                         title="MNIST: FD-MNIST against steps",
                         log_metric=True)
    seed = out / f"seed{scale.seeds[0]}"
    plot_training_curves({name: seed / name for name in ("teacher", f"cd-S{scale.student_steps[-1]}")
                          if (seed / name / "log.jsonl").is_file()}, out / "training-curves.png")
    students = {f"MCM CD, S = {s}": seed / f"cd-S{s}" for s in scale.student_steps}
    plot_training_curves({label: run for label, run in students.items() if (run / "log.jsonl").is_file()},
                         out / "fd-vs-training-steps.png", key="eval.fd_mnist")


def parse_args(doc: str, out: str, scales: dict, argv=None) -> tuple[list[int], Scale, Path]:
    """The options of the MNIST experiments: (the seeds to run now, the scale, the run directory); sets the torch
    threads. Every experiment resumes from the runs scored so far and reports every seed scored."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=out, help="run directories (outside git: record their scores with "
                        "python -m experiments.results add)")
    parser.add_argument("--scale", choices=sorted(scales), default="full")
    parser.add_argument("--seeds", type=int, nargs="+", help="run only these seeds (the report reads every seed "
                        "already run); e.g. one process per seed, each with --threads 1")
    parser.add_argument("--threads", type=int, help="torch threads of this process (default: torch's)")
    parser.add_argument("--report", action="store_true", help="train nothing: report the runs scored so far")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = scales[args.scale]
    return [] if args.report else list(args.seeds or scale.seeds), scale, Path(args.out)


def main(argv=None):
    seeds, scale, out = parse_args(__doc__, "runs/tables", SCALES, argv)
    start = time.perf_counter()
    for seed in seeds:
        run_seed(scale, seed, out)
    per_seed = [results for results in (scored(scale, seed, out) for seed in scale.seeds) if results]
    text = tables(per_seed, scale)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(text)
    plots(per_seed, scale, out)
    print(text)
    print(f"tables of {len(per_seed)} seed(s) in {out}/tables.md; this process ran "
          f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
