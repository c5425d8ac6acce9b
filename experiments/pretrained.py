"""Trains, scores and exports the pretrained MNIST models shipped in mcm_fast/pretrained (issues 17 and 31).

A class-conditional teacher (the tiny-res UViT at 16x16, v-loss; the backbone study's best, docs/results.md) and
two multistep consistency students distilled from it (Algorithm 1 with the package's default distillation
settings), each one network for S = 1, 2, 4, 8 and 16: mnist-mcm, and mnist-mcm-guided with classifier-free
guidance distilled in (w ~ U(0, 2), one call per step). Every model is scored in FD-MNIST, precision and recall
on the same EVAL_N noises and labels against MNIST's test digits: the students at each S they serve (the guided
one also at 4 steps with each w of GUIDANCE), the teacher with DDIM and aDDIM at 1-64 steps and aDDIM at 256.
The EMA weights go to mcm_fast/pretrained/<name>/ as a checkpoint directory (no optimizer state), with the scores
and the command in its checkpoint.json, in mcm_fast/pretrained/README.md (the model card) and in
docs/images/pretrained.png (the card's plot). At 16x16 rather than MNIST's 28: a 28x28 tiny-res network costs
3x the compute per image, and the three models train here in about 2 core-hours as it is.

Each run is an ordinary run directory, --out/seed{N}/{run}: rerun the same command and it resumes. Every named
model is trained before any is scored (a student needs its teacher's run, not its scores), so a second process
with --models can train a student beside the first. --models rebuilds only the models named. The shipped models
are seed 0's; --seed N trains and scores the same family from another seed without exporting it (issue 31's
goals over seeds: `python -m experiments.results add pretrained runs/pretrained`).

    python -m experiments.pretrained --out runs/pretrained --threads 1
    python -m experiments.pretrained --out runs/pretrained --threads 1 --models mnist-mcm-guided
    python -m experiments.pretrained --out runs/pretrained --threads 1 --models mnist-teacher,mnist-mcm --seed 1
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from experiments.mnist_tables import scores_of
from mcm_fast.commands.evaluate import score_budgets
from mcm_fast.metrics.plots import plot_metric_vs_steps
from mcm_fast.pretrained import PRETRAINED_DIR
from mcm_fast.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

EVAL_N = 2000
EVAL_SEED = 1
# the tiny-res UViT (docs/results.md, "Which backbone?"): 2000 steps at the constant rate, 1000 decaying it to 0
TEACHER = {"model": "tiny-res", "steps": 3000, "cooldown": 1000, "seed": 0}
# the teacher's network; 2000 steps at the constant rate, then 500 decaying it to 0 (FD on 200 samples every 500)
STUDENT = {"model": "tiny-res", "steps": 2500, "cooldown": 500, "seed": 0, "eval_every": 500, "sample_steps": 4,
           "objective": {"student_steps": [1, 2, 4, 8, 16]}}
STUDENTS = {  # name: options over STUDENT
    "mnist-mcm": {},
    "mnist-mcm-guided": {"objective": {"student_steps": [1, 2, 4, 8, 16], "guidance": [0, 2]}},
}
STUDENT_STEPS = (1, 2, 4, 8, 16)
GUIDANCE = (0.5, 1.0, 2.0)  # the guided student is also scored at these w, at 4 steps
PLOT = Path(__file__).parents[1] / "docs" / "images" / "pretrained.png"
SAMPLER_NAMES = {"ddim": "DDIM", "addim": "aDDIM"}
TEACHER_BUDGETS = [(s, sampler) for sampler in ("ddim", "addim") for s in (*STUDENT_STEPS, 64)] + [(256, "addim")]


def configs(out: Path, seed: int = 0) -> dict:
    """{name: (run directory, config)} of every shipped model from one seed; the students distill the teacher's
    run of that seed."""
    out = out / f"seed{seed}"
    runs = {"mnist-teacher": (out / "teacher", load_config("tiny-teacher", {**TEACHER, "seed": seed}))}
    for name, options in STUDENTS.items():
        runs[name] = (out / name.removeprefix("mnist-"),
                      load_config("tiny-cd", {**STUDENT, "seed": seed, "teacher": str(out / "teacher"), **options}))
    return runs


def budgets_of(config) -> list[tuple]:
    """The (steps, sampler[, guidance]) a model is scored at: the teacher's TEACHER_BUDGETS; a student at each
    S it serves, and a guided one also at 4 steps with each w of GUIDANCE."""
    if config.kind == "teacher":
        return TEACHER_BUDGETS
    guided = [(4, "mcm", w) for w in GUIDANCE] if config.objective.guidance else []
    return [(s, "mcm") for s in config.objective.student_steps] + guided


def scores(directory: Path, budgets, n: int = EVAL_N) -> list[dict]:
    """FD-MNIST, precision and recall of a run's EMA model per (steps, sampler) on n samples, cached in
    scores/step-N/scores.json for its newest checkpoint (a run resumed to more steps is scored again)."""
    cache = directory / "scores" / latest_checkpoint(directory).name
    return scores_of(cache, lambda: score_budgets(directory, budgets, n, EVAL_SEED))


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


def shipped() -> dict[str, dict]:
    """{name: checkpoint} of every shipped model, the teacher first."""
    return {name: load_checkpoint(PRETRAINED_DIR / name) for name in ["mnist-teacher", *STUDENTS]}


def kind(config: dict) -> str:
    """The model card's name for what a model's training config made."""
    if config["kind"] == "teacher":
        return "teacher"
    objective = config["objective"]
    guided = ", guidance distilled, w ~ U({}, {})".format(*objective["guidance"]) if objective["guidance"] else ""
    return f"MCM CD, one student for S = {', '.join(map(str, objective['student_steps']))}{guided}"


def teacher_best(checkpoints: dict[str, dict]) -> dict:
    """The teacher's score row of lowest FD-MNIST, any sampler and steps."""
    return min(checkpoints["mnist-teacher"]["card"]["scores"], key=lambda row: row["fd_mnist"])


def model_card(checkpoints: dict[str, dict]) -> str:
    """mcm_fast/pretrained/README.md from the shipped checkpoints: every score, beside the teacher's at the same
    steps, and the commands that made them."""
    teacher = {(r["steps"], r["sampler"]): r for r in checkpoints["mnist-teacher"]["card"]["scores"]}
    best = teacher_best(checkpoints)
    lines = ["# Pretrained models\n\n",
             "Class-conditional MNIST at 16x16 (the tiny-res UViT, 0.59M parameters, EMA weights), trained on this "
             "package's shipped MNIST by `experiments/pretrained.py`. Load one with `mf.load_pretrained(name)`; "
             "a student's `n_steps` picks its S, a guided one's `guidance=` its w.\n\n",
             f"Scores: FD-MNIST (lower is better), precision and recall, on {EVAL_N} samples (the same noises and "
             f"labels for every model) against {EVAL_N} MNIST test digits. The teacher's best: FD-MNIST "
             f"{best['fd_mnist']:.1f} ({best['sampler']}, {best['steps']} steps). Plot: "
             "[docs/images/pretrained.png](../../docs/images/pretrained.png).\n\n",
             "| name | kind | training steps (batch 128) | sampler | steps | guidance w | FD-MNIST | precision | "
             "recall | teacher DDIM, same steps | teacher aDDIM, same steps |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|\n"]
    commands = {}
    for name, checkpoint in checkpoints.items():
        card, label = checkpoint["card"], kind(checkpoint["config"])
        commands.setdefault((card["command"], card["commit"]), []).append(name)
        for row in card["scores"]:
            w = row.get("guidance", 0)
            same = [teacher.get((row["steps"], s), {}).get("fd_mnist") for s in ("ddim", "addim")]
            same = [f"{v:.1f}" if v is not None and label != "teacher" and not w else "" for v in same]
            lines.append(f"| {name} | {label} | {card['training_steps']} | {row['sampler']} | {row['steps']} | "
                         f"{w:g} | {row['fd_mnist']:.1f} | {row['precision']:.3f} | {row['recall']:.3f} | "
                         f"{same[0]} | {same[1]} |\n")
    lines.append("\nCommands (the training configs are in each model's checkpoint.json):\n\n")
    lines += [f"- `{command}` (commit {commit}): {', '.join(names)}\n" for (command, commit), names in commands.items()]
    return "".join(lines)


def plot_card(checkpoints: dict[str, dict], path: Path) -> Path:
    """FD-MNIST, precision and recall against steps 1-16: the students (unguided), the teacher with DDIM and
    aDDIM at the same calls, and the teacher's best as a level."""
    rows = [{**row, "series": f"teacher {SAMPLER_NAMES[row['sampler']]}"}
            for row in checkpoints["mnist-teacher"]["card"]["scores"] if row["steps"] <= max(STUDENT_STEPS)]
    for name in STUDENTS:
        rows += [{**row, "series": name} for row in checkpoints[name]["card"]["scores"] if not row.get("guidance")]
    best = teacher_best(checkpoints)
    return plot_metric_vs_steps(rows, path, ("fd_mnist", "precision", "recall"), series="series", log_metric=True,
                                best={f"teacher's best ({best['sampler']}, {best['steps']} steps)": best})


def _fds(seed: dict, run: str, sampler: str) -> dict[int, float]:
    """{steps: FD-MNIST} of one seed's run and sampler, unguided."""
    return {r["steps"]: r["fd_mnist"] for r in seed.get(run, []) if r["sampler"] == sampler and not r.get("guidance")}


def _spread(values: list[float], form: str = "{:.1f}") -> str:
    """'mean ± std (v1 / v2 / ...)' of per-seed values, or the one value."""
    if len(values) == 1:
        return form.format(values[0])
    return f"{form.format(statistics.mean(values))} ± {form.format(statistics.stdev(values))} " \
           f"({' / '.join(form.format(v) for v in values)})"


def seeds_table(seeds: list[dict[str, list[dict]]]) -> str:
    """Markdown: the family's FD-MNIST at each step count over training seeds (mean ± std, per seed) and issue
    31's goals per seed against that seed's teacher. seeds: {run: score rows} per seed (results.per_seed)."""
    seeds = [seed for seed in seeds if "teacher" in seed and "mcm" in seed]
    series = {"teacher, DDIM": ("teacher", "ddim"), "teacher, aDDIM": ("teacher", "addim"),
              "mnist-mcm (one student for S = 1-16)": ("mcm", "mcm")}
    per_seed = {label: [_fds(seed, *run) for seed in seeds] for label, run in series.items()}
    lines = [f"{len(seeds)} training seeds; FD-MNIST mean ± standard deviation (per seed).\n\n",
             "| steps (network calls) | " + " | ".join(series) + " |\n", "|---|" + "---|" * len(series) + "\n"]
    for n in (*STUDENT_STEPS, 64, 256):
        cells = [_spread([fds[n] for fds in found]) if all(n in fds for fds in found) else "-"
                 for found in per_seed.values()]
        lines.append(f"| {n} | " + " | ".join(cells) + " |\n")
    best = [min(r["fd_mnist"] for r in seed["teacher"]) for seed in seeds]
    student = [_fds(seed, "mcm", "mcm") for seed in seeds]
    teacher = [{s: min(_fds(seed, "teacher", "ddim")[s], _fds(seed, "teacher", "addim")[s]) for s in STUDENT_STEPS}
               for seed in seeds]
    lines += [f"\nThe teacher's best (any sampler, up to 256 steps): {_spread(best, '{:.2f}')}.\n\n",
              "| goal | per seed | met |\n|---|---|---|\n"]
    for steps, limit, goal in ((8, 1.0, "at or below"), (4, 1.1, "within 10% of"), (2, 1.3, "within 30% of"),
                               (1, 2.0, "within 2x of")):
        ratios = [fds[steps] / b for fds, b in zip(student, best)]
        lines.append(f"| {steps} {'step' if steps == 1 else 'steps'} {goal} the teacher's best | "
                     f"{' / '.join(f'{r:.2f}x' for r in ratios)} | {sum(r <= limit for r in ratios)} of "
                     f"{len(seeds)} seeds |\n")
    beaten = [[s for s in STUDENT_STEPS if fds[s] < same[s]] for fds, same in zip(student, teacher)]
    lines.append(f"| better than the teacher (DDIM and aDDIM) at the same calls, 1-16 | "
                 f"{' / '.join(', '.join(map(str, b)) for b in beaten)} steps | "
                 f"{sum(len(b) == len(STUDENT_STEPS) for b in beaten)} of {len(seeds)} seeds |\n")
    falls = [[a for a, b in zip(STUDENT_STEPS, STUDENT_STEPS[1:]) if fds[b] > fds[a]] for fds in student]
    lines.append(f"| falls monotonically from 1 to 16 steps | "
                 f"{' / '.join('rises after ' + ', '.join(map(str, f)) if f else 'falls' for f in falls)} | "
                 f"{sum(not f for f in falls)} of {len(seeds)} seeds |\n")
    return "".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pretrained")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--seed", type=int, default=0, help="the family's training seed; only seed 0 is exported")
    parser.add_argument("--models", type=lambda text: text.split(","), default=None,
                        help="comma-separated names to train, score and export (default: every model)")
    args = parser.parse_args(argv)
    runs = configs(Path(args.out), args.seed)
    unknown = sorted(set(args.models or ()) - set(runs))
    if unknown:
        parser.error(f"--models: expected names among {', '.join(runs)}, got {', '.join(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(["python -m experiments.pretrained", *argv])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    chosen = {name: run for name, run in runs.items() if args.models is None or name in args.models}
    for directory, config in chosen.values():  # every training first: a student needs its teacher's run only
        train(config, directory, progress=False)
    for name, (directory, config) in chosen.items():
        start = time.perf_counter()
        rows = scores(directory, budgets_of(config))
        target = export(name, directory, rows, command, commit) if args.seed == 0 else directory
        print(f"{name}: {[(r['steps'], r['sampler'], round(r['fd_mnist'], 1)) for r in rows]} "
              f"(scored in {(time.perf_counter() - start) / 60:.1f} min) -> {target}", flush=True)
    if args.seed == 0 and all((PRETRAINED_DIR / name).is_dir() for name in runs):
        (PRETRAINED_DIR / "README.md").write_text(model_card(shipped()))
        plot_card(shipped(), PLOT)

if __name__ == "__main__":
    main()
