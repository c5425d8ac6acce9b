"""Trains, scores and exports the pretrained MNIST models shipped in mcm_fast/pretrained (issue 17).

A class-conditional teacher (the tiny UViT at 16x16, v-loss) and multistep consistency students distilled from
it for S = 1, 2, 4 and 8 (Algorithm 1 with the package's default distillation settings). Every model is scored
in FD-MNIST, precision and recall on the same EVAL_N noises and labels against MNIST's test digits: the
students at S steps, the teacher with DDIM and aDDIM at 1-256 steps. The EMA weights go to
mcm_fast/pretrained/<name>/ as a checkpoint directory (no optimizer state), with the scores and the command in
its checkpoint.json and in mcm_fast/pretrained/README.md, the model card.

Each run is an ordinary run directory under --out: rerun the same command and it resumes.

    python experiments/pretrained.py --out runs/pretrained --threads 1
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from mnist_tables import scores_of

from mcm_fast.commands.evaluate import score_budgets
from mcm_fast.pretrained import PRETRAINED_DIR
from mcm_fast.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

EVAL_N = 2000
EVAL_SEED = 1
TEACHER = {"steps": 3000, "seed": 0}
STUDENT_STEPS = (4, 8, 2, 1)  # trained in this order
STUDENT = {"steps": 2500, "seed": 0}
TEACHER_BUDGETS = [(s, sampler) for sampler in ("ddim", "addim") for s in (1, 2, 4, 8, 16, 64)] + [(256, "addim")]


def configs(out: Path) -> dict:
    """{name: (run directory, config)} of every shipped model."""
    runs = {"mnist-teacher": (out / "teacher", load_config("tiny-teacher", TEACHER))}
    for s in STUDENT_STEPS:
        runs[f"mnist-mcm{s}"] = (out / f"mcm{s}", load_config("tiny-cd", {
            **STUDENT, "teacher": str(out / "teacher"), "objective": {"student_steps": s}}))
    return runs


def scores(directory: Path, budgets) -> list[dict]:
    """FD-MNIST, precision and recall of a run's EMA model per (steps, sampler), cached in scores.json."""
    return scores_of(directory, lambda: score_budgets(directory, budgets, EVAL_N, EVAL_SEED))


def export(name: str, directory: Path, rows: list[dict], command: str, commit: str) -> Path:
    """The run's EMA weights as mcm_fast/pretrained/<name>, a checkpoint directory with its model card entry."""
    state = load_checkpoint(latest_checkpoint(directory))
    card = {"name": name, "command": command, "commit": commit, "data": "MNIST train split (shipped), 16x16",
            "training_steps": state["step"], "batch_size": state["config"]["optim"]["batch_size"],
            "eval_n": EVAL_N, "eval_seed": EVAL_SEED,
            "eval": f"{EVAL_N} samples (noise seed {EVAL_SEED}, labels 0-9 cycled) against {EVAL_N} MNIST test digits",
            "scores": rows}
    target = PRETRAINED_DIR / name
    save_checkpoint(target, state["ema"], step=state["step"], keep=1, config=state["config"],
                    data_info=state["data_info"], card=card)
    return target


def model_card(cards: dict[str, dict]) -> str:
    teacher = {(r["steps"], r["sampler"]): r for r in cards["mnist-teacher"]["scores"]}
    lines = ["# Pretrained models\n\n",
             "Class-conditional MNIST at 16x16 (the tiny UViT, 0.64M parameters, EMA weights), trained on this "
             "package's shipped MNIST by `experiments/pretrained.py`. Load one with `mf.load_pretrained(name)`.\n\n",
             f"Scores: FD-MNIST (lower is better), precision and recall, on {EVAL_N} samples (the same noises and "
             f"labels for every model) against {EVAL_N} MNIST test digits.\n\n",
             "| name | kind | training steps (batch 128) | sampler | steps | FD-MNIST | precision | recall | "
             "teacher DDIM, same steps | teacher aDDIM, same steps |\n|---|---|---|---|---|---|---|---|---|---|\n"]
    for name, card in cards.items():
        for row in card["scores"]:
            same = [teacher.get((row["steps"], s), {}).get("fd_mnist") for s in ("ddim", "addim")]
            same = [f"{v:.1f}" if v is not None and not name.endswith("teacher") else "" for v in same]
            lines.append(f"| {name} | {'teacher' if name.endswith('teacher') else 'MCM CD'} | "
                         f"{card['training_steps']} | "
                         f"{row['sampler']} | {row['steps']} | {row['fd_mnist']:.1f} | {row['precision']:.3f} | "
                         f"{row['recall']:.3f} | {same[0]} | {same[1]} |\n")
    first = next(iter(cards.values()))
    lines.append(f"\nCommand: `{first['command']}` (commit {first['commit']}); the training configs are in each "
                 "model's checkpoint.json.\n")
    return "".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pretrained")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root, cwd = Path(__file__).resolve().parents[1], Path.cwd().resolve()
    command = (f"cd {cwd.relative_to(root)} && " if cwd != root else "") + \
        f"python {os.path.relpath(Path(__file__).resolve(), cwd)} " + " ".join(argv if argv is not None else
        sys.argv[1:])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cards = {}
    for name, (directory, config) in configs(Path(args.out)).items():
        start = time.perf_counter()
        train(config, directory, progress=False)
        budgets = TEACHER_BUDGETS if config.kind == "teacher" else [(config.objective.student_steps, "mcm")]
        rows = scores(directory, budgets)
        target = export(name, directory, rows, command, commit)
        cards[name] = load_checkpoint(target)["card"]
        print(f"{name}: {[(r['steps'], r['sampler'], round(r['fd_mnist'], 1)) for r in rows]} "
              f"({(time.perf_counter() - start) / 60:.1f} min) -> {target}", flush=True)
    (PRETRAINED_DIR / "README.md").write_text(model_card(cards))


if __name__ == "__main__":
    main()
