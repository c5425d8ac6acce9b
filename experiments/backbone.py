"""Which backbone makes a good small teacher (issue 31)? UViT variants against a UNet2DModel of equal size.

Per seed, one teacher per backbone below, each with the tiny preset's budget (MNIST 16x16, class-conditional,
v-loss, 1200 steps of batch 128: equal training images), scored in FD-MNIST, precision and recall with DDIM at
8 and 64 steps and aDDIM at 256 (the same noises and labels for every backbone). Every run is an ordinary run
directory under --out with its scores in scores.json, so rerunning the script continues where it stopped; the
table (parameters, multiply-adds per image, FD per sampler) goes to --out/backbone.md. Then the STUDENTS: MCM CD
students of a backbone's teacher at the tables' budget, scored against their teacher's best (issue 31's floor).
`--stage teachers` or `--stage students` runs one stage (two processes, one thread each);
`python -m experiments.results add backbone runs/backbone` records the scores.

    python -m experiments.backbone --seeds 0 --threads 1                     # in runs/backbone
    python -m experiments.backbone --scale smoke --out /tmp/backbone         # the pipeline end to end in minutes
(from the repository root, with the diffusers extra installed for the UNet)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.any_teacher import UNET
from experiments.mnist_tables import Run, Scale, cell, evaluate, parse_args, scores_of, student_config, summarize
from mcm_fast.models.uvit import count_parameters
from mcm_fast.train.build import load_model
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

TINY = {"levels": [["resnet", 16, 1], ["resnet", 32, 1]], "middle_channels": 128, "middle_blocks": 2,
        "emb_channels": 128, "head_dim": 32}
BACKBONES = {  # name -> the config's model and model_options; the references last
    # the same parameters moved to high resolution: ResNet levels twice as wide, a narrower middle
    "uvit-res32": {"model_options": {**TINY, "levels": [["resnet", 32, 1], ["resnet", 64, 1]],
                                     "middle_channels": 96, "emb_channels": 64}},
    # one more ResNet level (16, 32, 64 channels as the UNet), the middle at 2x2
    "uvit-3level": {"model_options": {**TINY, "levels": [["resnet", 16, 1], ["resnet", 32, 1], ["resnet", 64, 1]],
                                      "middle_blocks": 1, "emb_channels": 64}},
    # two ResNet blocks per level at twice the width, a narrow middle
    "uvit-res32x2": {"model_options": {**TINY, "levels": [["resnet", 32, 2], ["resnet", 64, 2]],
                                       "middle_channels": 64, "emb_channels": 64}},
    "uvit-tiny": {},  # the package's tiny preset: 0.64M parameters, most of them in the 4x4 middle
    "unet": {"model": "diffusers-unet2d", "model_options": UNET},  # 0.69M
}

STUDENTS = {"uvit-res32x2": (8, 4)}  # backbone -> the S of the CD students distilled from its teacher, in order

SCALES = {  # students: the tables' budget (2000 steps, teacher steps annealed 32 -> 128, FD every 250 steps)
    "full": Scale(resolution=16, teacher_iters=1200, student_iters=2000, eval_n=2000, seeds=(0, 1, 2),
                  eval_every=250),
    "smoke": Scale(resolution=8, teacher_iters=2, student_iters=2, eval_n=20, seeds=(0,), teacher_budget=4,
                   eval_every=1),
}


def samplers(scale: Scale) -> list[tuple[int, str]]:
    return [(8, "ddim"), (64, "ddim"), (scale.teacher_budget, "addim")] if scale.teacher_budget > 8 else \
        [(2, "ddim"), (scale.teacher_budget, "addim")]


def teacher_config(scale: Scale, seed: int, name: str):
    return load_config("tiny-teacher", {"seed": seed, "steps": scale.teacher_iters,
                                        "data": {"resolution": scale.resolution},
                                        "eval_samples": min(200, scale.eval_n), **BACKBONES[name]})


def size(directory: Path) -> dict:
    """Parameters and multiply-adds per image of a run's network (the FLOP counter counts 2 per multiply-add)."""
    model, _, info = load_model(directory)
    net = model.net
    shape = (2, *info["shape"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(shape), torch.full((2,), 0.5), label=torch.zeros(2, dtype=torch.long))
    return {"parameters": count_parameters(net), "macs_per_image": counter.get_total_flops() / 2 / shape[0]}


def run_students(scale: Scale, seed: int, out: Path, echo=print) -> None:
    """Distills STUDENTS from their backbone's scored teacher (MCM CD at each S), scored at S steps with the
    teachers' noises: does a student reach its teacher once the teacher is good (issue 31's floor)?"""
    for name, steps in STUDENTS.items():
        teacher_dir = out / f"seed{seed}" / name
        for s in steps if (teacher_dir / "scores.json").is_file() else ():
            directory = out / f"seed{seed}" / f"{name}-cd-S{s}"
            if not (directory / "scores.json").is_file():
                echo(f"== seed {seed}: {name} MCM CD, S = {s} -> {directory}")
                train(student_config(scale, seed, Run("backbone", directory.name, "cd", s, BACKBONES[name]),
                                     teacher_dir), directory, progress=False)
            scores_of(directory, lambda d=directory, s=s: evaluate(d, [(s, "mcm")], scale, seed))


def run_seed(scale: Scale, seed: int, out: Path, names, echo=print) -> None:
    for name in names:
        directory = out / f"seed{seed}" / name
        if not (directory / "scores.json").is_file():
            echo(f"== seed {seed}: {name} -> {directory}")
            train(teacher_config(scale, seed, name), directory, progress=False)
        scores_of(directory, lambda d=directory: [{**row, **size(d)} for row in evaluate(d, samplers(scale), scale,
                                                                                       seed)])


def scored(scale: Scale, out: Path) -> list[dict[str, list[dict]]]:
    """One {backbone: score rows} per seed of the runs scored so far."""
    names = [*BACKBONES, *(f"{name}-cd-S{s}" for name, steps in STUDENTS.items() for s in steps)]
    per_seed = [{n: json.loads((out / f"seed{seed}" / n / "scores.json").read_text()) for n in names
                 if (out / f"seed{seed}" / n / "scores.json").is_file()} for seed in scale.seeds]
    return [r for r in per_seed if r]


def table(per_seed, scale: Scale) -> str:
    """Parameters, multiply-adds per image and FD-MNIST per sampler of each backbone (mean ± spread over seeds)."""
    fd, precision, recall = (summarize(per_seed, k) for k in ("fd_mnist", "precision", "recall"))
    budget = samplers(scale)
    lines = ["| backbone | parameters | MACs / image | " + " | ".join(f"{s} {m}" for s, m in budget)
             + " | precision / recall (last) |\n", "|---|---|---|" + "---|" * (len(budget) + 1) + "\n"]
    for name in BACKBONES:
        rows = next((r[name] for r in per_seed if name in r), None)
        if rows is None:
            continue
        last = (name, *budget[-1])
        lines.append(f"| {name} | {rows[0]['parameters'] / 1e6:.3f}M | {rows[0]['macs_per_image'] / 1e6:.1f}M | "
                     + " | ".join(cell(fd, (name, s, m)) for s, m in budget)
                     + f" | {cell(precision, last, 3)} / {cell(recall, last, 3)} |\n")
    students = [(name, s) for name, steps in STUDENTS.items() for s in steps if (f"{name}-cd-S{s}", s, "mcm") in fd]
    if students:
        lines += ["\n| MCM CD student of | S | FD-MNIST | precision / recall | its teacher's best | against it |\n",
                  "|---|---|---|---|---|---|\n"]
    for name, s in students:
        key, (best, budget_best) = (f"{name}-cd-S{s}", s, "mcm"), min(
            (fd[(name, st, m)][0], f"{st} {m}") for st, m in budget if (name, st, m) in fd)
        lines.append(f"| {name} | {s} | {cell(fd, key)} | {cell(precision, key, 3)} / {cell(recall, key, 3)} | "
                     f"{best:.1f} ({budget_best}) | {fd[key][0] / best - 1:+.0%} |\n")
    return "".join(lines)


def main(argv=None):
    stage = argparse.ArgumentParser(add_help=False)
    stage.add_argument("--stage", choices=("all", "teachers", "students"), default="all")
    known, rest = stage.parse_known_args(argv)
    seeds, scale, out = parse_args(__doc__, "runs/backbone", SCALES, rest)
    start = time.perf_counter()
    for seed in seeds:
        if known.stage != "students":
            run_seed(scale, seed, out, BACKBONES)
        if known.stage != "teachers":
            run_students(scale, seed, out)
    text = table(scored(scale, out), scale)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbone.md").write_text(text)
    print(text)
    print(f"table in {out}/backbone.md; this process ran {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
