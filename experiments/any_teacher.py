"""Any teacher (issue 21): does MCM work from a flow-matching teacher, and with a UNet instead of a UViT?

Per seed, three teachers on MNIST (class-conditional, the tiny preset's budget), each distilled by MCM CD at
S = 2, 4, 8 with the same student budget:
  v-uvit     the tiny UViT, cosine schedule, v-prediction (the package's default teacher);
  flow-uvit  the same UViT on the rectified-flow path z = (1 - u) x + u eps, predicting the velocity eps - x;
  v-unet     a diffusers UNet2DModel of about the UViT's size, cosine schedule, v-prediction.
Each student is scored (FD-MNIST, precision, recall) against its own teacher at the same number of network
calls (DDIM and aDDIM with S steps) and against the teacher's many-step aDDIM. Every run is an ordinary run
directory under --out with its scores in scores.json, so rerunning the script continues where it stopped; the
table goes to --out/tables.md; `python -m experiments.results add any_teacher runs/any_teacher` records the
scores (experiments/results.py).

    python -m experiments.any_teacher                                       # 3 seeds, in runs/any_teacher
    python -m experiments.any_teacher --scale smoke --out /tmp/any-teacher  # the pipeline end to end in minutes
(from the repository root, with the diffusers extra installed)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from experiments.mnist_tables import Scale, cell, evaluate, parse_args, scores_of, summarize
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

UNET = {"layers_per_block": 1, "block_out_channels": [16, 32, 64], "norm_num_groups": 8, "attention_head_dim": 32,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}  # 0.69M parameters; the tiny UViT has 0.64M
TEACHERS = {  # name -> what sets the teacher (and its students) apart
    "v-uvit": {},
    "flow-uvit": {"schedule": "flow", "prediction": "flow"},
    "v-unet": {"model": "diffusers-unet2d", "model_options": UNET},
}


SCALES = {
    "full": Scale(resolution=16, teacher_iters=1200, student_iters=2000, eval_n=2000, seeds=(0, 1, 2),
                  student_steps=(2, 4, 8)),
    "smoke": Scale(resolution=8, teacher_iters=2, student_iters=2, eval_n=20, seeds=(0,), student_steps=(2,),
                   teacher_steps=(2, 4), teacher_budget=4),
}


def teacher_config(scale: Scale, seed: int, name: str):
    return load_config("tiny-teacher", {"seed": seed, "steps": scale.teacher_iters,
                                        "data": {"resolution": scale.resolution},
                                        "eval_samples": min(200, scale.eval_n), **TEACHERS[name]})


def student_config(scale: Scale, seed: int, name: str, steps: int, teacher_dir: Path):
    objective = {"student_steps": steps, "teacher_steps": [*scale.teacher_steps, scale.student_iters]}
    return load_config("tiny-cd", {"seed": seed, "teacher": str(teacher_dir), "steps": scale.student_iters,
                                   "data": {"resolution": scale.resolution}, "eval_samples": min(200, scale.eval_n),
                                   "objective": objective, "sample_steps": steps, **TEACHERS[name]})


def run_seed(scale: Scale, seed: int, out: Path, echo=print) -> None:
    """Trains and scores every teacher and student of one seed that has no scores.json yet."""
    for name in TEACHERS:
        teacher_dir = out / f"seed{seed}" / name
        students = {s: out / f"seed{seed}" / f"{name}-cd-S{s}" for s in scale.student_steps}
        if not all((d / "scores.json").is_file() for d in [teacher_dir, *students.values()]):
            echo(f"== seed {seed}: teacher {name} -> {teacher_dir}")
            train(teacher_config(scale, seed, name), teacher_dir, progress=False)
        budgets = [(s, sampler) for sampler in ("ddim", "addim") for s in scale.student_steps]
        every = [*budgets, (scale.teacher_budget, "addim")]
        scores_of(teacher_dir, lambda d=teacher_dir, b=every: evaluate(d, b, scale, seed))
        for steps, directory in students.items():
            if not (directory / "scores.json").is_file():
                echo(f"== seed {seed}: {name} MCM CD, S = {steps} -> {directory}")
                train(student_config(scale, seed, name, steps, teacher_dir), directory, progress=False)
            scores_of(directory, lambda d=directory, s=steps: evaluate(d, [(s, "mcm")], scale, seed))


def scored(scale: Scale, seed: int, out: Path) -> dict[str, list[dict]]:
    """{run name: score rows} of the runs of a seed scored so far."""
    root = out / f"seed{seed}"
    names = [n for t in TEACHERS for n in (t, *(f"{t}-cd-S{s}" for s in scale.student_steps))]
    return {n: json.loads((root / n / "scores.json").read_text()) for n in names
            if (root / n / "scores.json").is_file()}


def table(per_seed, scale: Scale) -> str:
    """FD-MNIST (mean ± standard deviation over seeds) of each teacher and its students at the same calls."""
    fd = summarize(per_seed, "fd_mnist")
    ss = scale.student_steps
    lines = [f"### FD-MNIST at S network calls (the teacher's {scale.teacher_budget}-step aDDIM in the last column)\n",
             "| teacher | sampler | " + " | ".join(f"S = {s}" for s in ss) + f" | {scale.teacher_budget} |\n",
             "|---|---|" + "---|" * (len(ss) + 1) + "\n"]
    for name in TEACHERS:
        for label, key in (("teacher, DDIM", lambda s, n=name: (n, s, "ddim")),
                           ("teacher, aDDIM", lambda s, n=name: (n, s, "addim")),
                           ("MCM CD", lambda s, n=name: (f"{n}-cd-S{s}", s, "mcm"))):
            last = cell(fd, (name, scale.teacher_budget, "addim")) if label == "teacher, aDDIM" else ""
            lines.append(f"| {name} | {label} | " + " | ".join(cell(fd, key(s)) for s in ss) + f" | {last} |\n")
    return "".join(lines)


def main(argv=None):
    seeds, scale, out = parse_args(__doc__, "runs/any_teacher", SCALES, argv)
    start = time.perf_counter()
    for seed in seeds:
        run_seed(scale, seed, out)
    per_seed = [results for results in (scored(scale, seed, out) for seed in scale.seeds) if results]
    text = table(per_seed, scale)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(text)
    print(text)
    minutes = (time.perf_counter() - start) / 60
    print(f"table of {len(per_seed)} seed(s) in {out}/tables.md; this process ran {minutes:.1f} min")


if __name__ == "__main__":
    main()
