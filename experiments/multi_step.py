"""One student for every step count, and guidance in one call (issue 22), on the tables' MNIST teacher.

Per seed, beside experiments/mnist_tables.py's runs (same directory, same teacher, same configs):
  1. one multi-step student (S = 1, 2, 4, 8, 16 drawn per example) trained as long as the five single-S
     students of the tables together, against those five: FD-MNIST, precision and recall per S;
  2. a 4-step student with guidance w ~ U(0, 4) distilled into it, sampled with one call per step at
     w = 0, 1, 2, 4, against the tables' 4-step student guided with two calls per step: FD, precision,
     recall, network calls and seconds per image.
Runs are checkpointed and scored once (scores.json), so rerunning continues; --report writes the tables.

    python -m experiments.multi_step --seeds 0 --threads 1        # one seed; the tables' seed-0 runs are reused
    python -m experiments.multi_step --scale smoke --out /tmp/ms   # the pipeline end to end in minutes
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from experiments.mnist_tables import (
    SCALES,
    Run,
    Scale,
    evaluate,
    parse_args,
    scores_of,
    student_config,
    summarize,
    teacher_config,
)
from mcm_fast.metrics.evaluate import Scorer
from mcm_fast.train.build import load_model
from mcm_fast.train.loop import train

GUIDANCE = (0.0, 1.0, 2.0, 4.0)


def guided_steps(scale: Scale) -> int:
    """The S of the guidance runs: 4 at full scale (the middle S of the tables' table f)."""
    return scale.student_steps[min(2, len(scale.student_steps) - 1)]


def runs(scale: Scale) -> list[Run]:
    """The single-S students (the tables' cd-S runs), the multi-S student and the guidance-distilled one."""
    singles = [Run("multi", f"cd-S{s}", "cd", s) for s in scale.student_steps]
    multi = Run("multi", "cd-multi", "cd", max(scale.student_steps), {"objective": {
        "student_steps": list(scale.student_steps)}, "steps": scale.student_iters * len(scale.student_steps)})
    mid = guided_steps(scale)
    guided = Run("guidance", f"cd-guided-S{mid}", "cd", mid, {"objective": {"guidance": [0, 4]}})
    return [*singles, multi, guided]


@torch.no_grad()
def evaluate_guided(directory: Path, scale: Scale, seed: int) -> list[dict]:
    """FD-MNIST, precision, recall, network calls and seconds per image (sampling only) of a student at each
    guidance scale: one call per step when guidance is distilled into it, else two (classifier-free guidance).
    Calls are counted: the examples through the network's forward per image sampled."""
    model, kind, info = load_model(directory)
    scorer, steps = Scorer(kind.config, info, scale.eval_n, seed + 1000), guided_steps(scale)
    examples = []
    hook = model.register_forward_hook(lambda module, args, output: examples.append(len(output)))
    rows = []
    for w in GUIDANCE:
        seconds, calls = [], []

        def timed(noise, generator, w=w, seconds=seconds, calls=calls, **cond):
            examples.clear()
            start = time.perf_counter()
            images = kind.sample(model, steps, noise, generator=generator, **kind.guidance_inputs(w), **cond)
            seconds.append((time.perf_counter() - start) / len(noise))
            calls.append(sum(examples) / len(noise))
            return images

        scores, _ = scorer(timed)
        rows.append({"steps": steps, "sampler": f"w={w:g}", "guidance": w, "calls": calls[0],
                     "seconds_per_image": seconds[0], **scores})
    hook.remove()
    return rows


def run_seed(scale: Scale, seed: int, out: Path, echo=print) -> dict[str, list[dict]]:
    """Trains (or reuses) the teacher and the students of one seed and scores them; {run name: score rows}."""
    root = out / f"seed{seed}"
    teacher_dir = root / "teacher"
    two_call = root / f"cd-S{guided_steps(scale)}" / "guided"  # the unguided student, guided with two calls per step
    pending = [run for run in runs(scale) if not (root / run.name / "scores.json").is_file()]
    if pending or not (two_call / "scores.json").is_file():
        echo(f"== seed {seed}: teacher -> {teacher_dir}")
        train(teacher_config(scale, seed), teacher_dir, progress=False)
    results = {}
    for run in runs(scale):
        directory = root / run.name
        if run in pending or run.name == two_call.parent.name:
            echo(f"== seed {seed}: {run.name} -> {directory}")
            train(student_config(scale, seed, run, teacher_dir), directory, progress=False)
        if run.name == "cd-multi":
            budgets = [(s, "mcm") for s in scale.student_steps]
            results[run.name] = scores_of(directory, lambda d=directory, b=budgets: evaluate(d, b, scale, seed))
        elif run.table == "guidance":
            results[run.name] = scores_of(directory, lambda d=directory: evaluate_guided(d, scale, seed))
        else:
            results[run.name] = scores_of(directory, lambda d=directory, s=run.steps: evaluate(d, [(s, "mcm")], scale,
                                                                                                seed))
        if directory == two_call.parent:
            two_call.mkdir(exist_ok=True)
            results["cd-two-call"] = scores_of(two_call, lambda d=directory: evaluate_guided(d, scale, seed))
    return results


def report(per_seed: list[dict], scale: Scale) -> str:
    """Markdown: FD-MNIST per S of one multi-S checkpoint against five single-S ones; guided sampling."""
    fd, precision, recall = (summarize(per_seed, key) for key in ("fd_mnist", "precision", "recall"))
    per_image, calls_of = summarize(per_seed, "seconds_per_image"), summarize(per_seed, "calls")

    def cell(stats, key, digits=1):
        if key not in stats:
            return "-"
        mean, spread, count = stats[key]
        return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if count > 1 else "")

    ss, mid = scale.student_steps, guided_steps(scale)
    lines = [f"### One student for every S (FD-MNIST; {len(per_seed)} seed(s))\n",
             "| | " + " | ".join(f"S = {s}" for s in ss) + " |\n|---|" + "---|" * len(ss) + "\n",
             f"| five students, {scale.student_iters} steps each | "
             + " | ".join(cell(fd, (f"cd-S{s}", s, "mcm")) for s in ss) + " |\n",
             f"| one student, {scale.student_iters * len(ss)} steps | "
             + " | ".join(cell(fd, ("cd-multi", s, "mcm")) for s in ss) + " |\n",
             f"\n### Guidance at S = {mid}: distilled (one call per step) against two calls per step\n",
             "| w | student | calls | FD-MNIST | precision | recall | ms per image |\n|---|---|---|---|---|---|---|\n"]
    for w in GUIDANCE:
        for label, run in (("guidance distilled", f"cd-guided-S{mid}"), ("two-call guidance", "cd-two-call")):
            key = (run, mid, f"w={w:g}")
            ms = f"{per_image[key][0] * 1e3:.2f}" if key in per_image else "-"
            calls = f"{calls_of[key][0]:.0f}" if key in calls_of else "-"
            lines.append(f"| {w:g} | {label} | {calls} | {cell(fd, key)} | {cell(precision, key, 3)} | "
                         f"{cell(recall, key, 3)} | {ms} |\n")
    return "".join(lines)


def main(argv=None):
    seeds, scale, out = parse_args(__doc__, "runs/tables", SCALES, argv)  # the tables' runs are shared
    for seed in seeds:
        run_seed(scale, seed, out)
    per_seed = [results for results in (_scored(scale, seed, out) for seed in scale.seeds) if results]
    text = report(per_seed, scale)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multi_step.md").write_text(text)
    print(text)


def _scored(scale: Scale, seed: int, out: Path) -> dict[str, list[dict]]:
    """{run name: score rows} of a seed's runs scored so far."""
    root = out / f"seed{seed}"
    paths = {run.name: root / run.name / "scores.json" for run in runs(scale)}
    paths["cd-two-call"] = root / f"cd-S{guided_steps(scale)}" / "guided" / "scores.json"
    return {name: json.loads(path.read_text()) for name, path in paths.items() if path.is_file()}


if __name__ == "__main__":
    main()
