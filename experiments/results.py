"""The results ledger (issue 32): every score an experiment measured is one row of experiments/results.csv, and
the tables in docs/results.md are rendered from those rows, so the two cannot drift apart. Runs (checkpoints,
logs, scores.json) live under the git-ignored runs/; git keeps the ledger and the plots.

    python -m experiments.results add tables runs/tables        # a study's scored runs into the ledger
    python -m experiments.results render                        # docs/results.md's tables from the ledger
    python -m experiments.results check                         # exit 1 where docs/results.md differs

A study's runs are --out/seed{N}/{run}/scores.json (and {run}/guided/scores.json, or a checkpoint's
{run}/scores/step-N/scores.json); `add` records each score with
the run's training steps (its log) and the commit (HEAD, or the commit that last changed the file for runs
already in git), replacing rows of the same table, run, seed, steps, sampler, guidance and training steps. The periodic
scores in a run's log.jsonl go in as sampler "eval" at each training step (the plot of FD against training).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "experiments" / "results.csv"
DOC = ROOT / "docs" / "results.md"
FIELDS = ("table", "run", "seed", "steps", "sampler", "guidance", "calls", "fd_mnist", "precision", "recall",
          "ode_error", "seconds_per_image", "parameters", "macs_per_image", "peak_gib", "estimate_gib",
          "training_steps", "commit")
KEY = ("table", "run", "seed", "steps", "sampler", "guidance", "training_steps")
NUMBERS = {"seed": int, "steps": int, "calls": int, "parameters": int, "training_steps": int}
BLOCK = re.compile(r"(<!-- results: (\w+) -->\n)(.*?)(<!-- /results -->)", re.S)


def read(path: Path = LEDGER) -> list[dict]:
    """The ledger's rows, numbers as numbers and absent values as None."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [read_row(row) for row in csv.DictReader(file)]


def read_row(row: dict) -> dict:
    """A ledger row's text as values: numbers as numbers, absent values as None."""
    return {k: (NUMBERS.get(k, float)(v) if v != "" and k not in ("table", "run", "sampler", "commit") else v or None)
            for k, v in row.items()}


def write(rows: list[dict], path: Path = LEDGER) -> None:
    """The rows, sorted by their key, atomically."""
    order = lambda r: tuple("" if r[k] is None else f"{r[k]:>12}" if isinstance(r[k], int) else str(r[k])  # noqa: E731
                            for k in KEY)
    partial = path.with_suffix(".tmp")
    with partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=order):
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in FIELDS})
    partial.replace(path)


def _commit(path: Path) -> str:
    """The commit that last changed path if git tracks it, else HEAD's (short hashes)."""
    run = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return run("log", "-1", "--format=%h", "--", str(path.resolve())) or run("rev-parse", "--short", "HEAD")


def _log(directory: Path) -> list[dict]:
    path = directory / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def collect(table: str, out: Path) -> list[dict]:
    """The ledger rows of a study's scored runs under out (see the module docstring)."""
    rows, logged = [], set()
    for scores in sorted(out.glob("seed*/**/scores.json")):
        seed_dir = next(p for p in scores.parents if re.fullmatch(r"seed\d+", p.name))
        run_dir = scores.parent
        cached = run_dir.parent.name == "scores"  # a checkpoint's scores, RUN/scores/step-N/scores.json
        if cached:
            run_dir = run_dir.parent.parent
        log = _log(run_dir if run_dir.name != "guided" else run_dir.parent)
        steps = int(scores.parent.name.removeprefix("step-")) if cached else \
            max((entry["step"] for entry in log if "step" in entry), default=None)
        base = {"table": table, "run": run_dir.relative_to(seed_dir).as_posix(), "seed": int(seed_dir.name[4:]),
                "commit": _commit(scores)}
        rows += [{**base, **{k: v for k, v in score.items() if k in FIELDS}, "training_steps": steps}
                 for score in json.loads(scores.read_text())]
        if run_dir.name != "guided" and run_dir not in logged:  # its log once
            logged.add(run_dir)
            rows += [{**base, **{k: v for k, v in entry["eval"].items() if k in FIELDS}, "sampler": "eval",
                      "training_steps": entry["step"], "commit": _commit(run_dir / "log.jsonl")}
                     for entry in log if isinstance(entry.get("eval"), dict)]
    return [{k: row.get(k) for k in FIELDS} for row in rows]


def add(table: str, out: Path, path: Path = LEDGER) -> int:
    """Records the scores of out's runs as `table` in the ledger; returns how many rows it added or replaced. A
    row whose scores are unchanged keeps the commit it was recorded at (a study resumed later adds its new rows
    without restamping the old ones)."""
    old = {tuple(r[k] for k in KEY): r for r in read(path)}
    new = [_same_commit(row, old.get(tuple(row[k] for k in KEY))) for row in collect(table, out)]
    keys = {tuple(r[k] for k in KEY) for r in new}
    write([r for key, r in old.items() if key not in keys] + new, path)
    return len(new)


def _same_commit(row: dict, recorded: dict | None) -> dict:
    """row, with the recorded row's commit when every other value is the same (as the ledger reads it back)."""
    if recorded is None:
        return row
    written = read_row({k: "" if row.get(k) is None else str(row[k]) for k in FIELDS})
    same = all(written[k] == recorded[k] for k in FIELDS if k != "commit")
    return {**row, "commit": recorded["commit"]} if same else row


def per_seed(rows: list[dict], table: str, renames: dict | None = None) -> list[dict[str, list[dict]]]:
    """A study's final scores as its report functions take them: one {run: score rows} per seed."""
    seeds: dict[int, dict[str, list[dict]]] = {}
    for row in rows:
        if row["table"] == table and row["sampler"] != "eval":
            score = {k: v for k, v in row.items() if v is not None}
            seeds.setdefault(row["seed"], {}).setdefault((renames or {}).get(row["run"], row["run"]), []).append(score)
    return [seeds[s] for s in sorted(seeds)]


def _tables(rows):
    from experiments import mnist_tables
    return mnist_tables.tables(per_seed(rows, "tables"), mnist_tables.SCALES["full"])


def _multi_step(rows):
    from experiments import multi_step
    scale = multi_step.SCALES["full"]
    runs = {run.name for run in multi_step.runs(scale)}
    seeds = [{k: v for k, v in seed.items() if k in runs | {"cd-two-call"}}
             for seed in per_seed(rows, "tables", {f"cd-S{multi_step.guided_steps(scale)}/guided": "cd-two-call"})]
    return multi_step.report([s for s in seeds if "cd-multi" in s or "cd-guided-S4" in s], scale)


def _any_teacher(rows):
    from experiments import any_teacher
    return any_teacher.table(per_seed(rows, "any_teacher"), any_teacher.SCALES["full"])


def _backbone(rows):
    from experiments import backbone
    seeds = per_seed(rows, "backbone")
    return backbone.table(seeds, backbone.SCALES["full"]) if seeds else "No backbone run is scored yet.\n"


def _fd_noise(rows):
    from experiments import fd_noise
    rows = [row for row in rows if row["table"] == "fd_noise"]
    return fd_noise.table(rows) if rows else "No sample set is scored yet.\n"


def _pretrained(rows):
    from experiments import pretrained
    seeds = per_seed(rows, "pretrained")
    return pretrained.seeds_table(seeds) if seeds else "No seed of the family is scored yet.\n"


def _floor(rows):
    from experiments import floor
    mine = [row for row in rows if row["table"] == "floor"]
    teacher = {}  # the pretrained family's teacher of each seed: the students' teacher
    for row in rows:
        if row["table"] == "pretrained" and row["run"] == "teacher" and row["sampler"] != "eval":
            teacher.setdefault(row["seed"], []).append(row)
    return floor.table(mine, teacher) if mine else "No run of the floor study is scored yet.\n"


def _lora_memory(rows):
    from experiments import lora_memory
    rows = [row for row in rows if row["table"] == "lora_memory"]
    return lora_memory.table(rows) if rows else "No run of the memory measurement is recorded yet.\n"


def _text_to_image(rows):
    from experiments import text_to_image
    rows = [row for row in rows if row["table"] == "text_to_image"]
    return text_to_image.table(rows) if rows else "No model of the text-to-image proof is scored yet.\n"


RENDERERS = {"pretrained": _pretrained, "text_to_image": _text_to_image, "tables": _tables,
             "multi_step": _multi_step, "any_teacher": _any_teacher, "backbone": _backbone, "fd_noise": _fd_noise,
             "floor": _floor, "lora_memory": _lora_memory}


def render(text: str, rows: list[dict]) -> str:
    """text with every <!-- results: NAME --> block replaced by RENDERERS[NAME] of the rows."""
    def block(match):
        if match.group(2) not in RENDERERS:
            raise ValueError(f"results: no renderer {match.group(2)!r}; expected one of {tuple(RENDERERS)}")
        return match.group(1) + RENDERERS[match.group(2)](rows) + match.group(4)
    return BLOCK.sub(block, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="a study's scored runs into the ledger")
    adding.add_argument("table", help="the study: " + ", ".join(RENDERERS))
    adding.add_argument("out", type=Path, help="its run directory (seed*/RUN/scores.json)")
    commands.add_parser("render", help="docs/results.md's tables from the ledger")
    commands.add_parser("check", help="exit 1 if docs/results.md's tables differ from the ledger's")
    args = parser.parse_args(argv)
    if args.command == "add":
        print(f"{add(args.table, args.out)} rows of {args.out} recorded as {args.table!r} in {LEDGER}")
        return 0
    text = DOC.read_text()
    rendered = render(text, read())
    if args.command == "render":
        DOC.write_text(rendered)
        return 0
    if rendered != text:
        print(f"{DOC}: its tables differ from {LEDGER}; run python -m experiments.results render", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
