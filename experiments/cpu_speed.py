"""CPU training speed in the trainer's own loop (issue 17): fp32 eager against bf16 autocast, channels_last and
the compiled loss, for the demo's teacher (v-loss) and its 4-step CD student, in one run.

Each variant builds a Trainer from the demo's presets (batch 128), takes `--warmup` untimed steps (which
include torch.compile's compilation), then times `--steps` optimizer steps of Trainer._train_step.

    python experiments/cpu_speed.py --threads 2 --out runs/cpu-speed.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mcm_fast.train.config import load_config
from mcm_fast.train.loop import Trainer

VARIANTS = {  # name: (config overrides, channels_last)
    "fp32": ({"precision": "fp32"}, False),
    "bf16": ({"precision": "bf16"}, False),
    "fp32 channels_last": ({"precision": "fp32"}, True),
    "bf16 channels_last": ({"precision": "bf16"}, True),
    "fp32 compiled": ({"precision": "fp32", "compile": True}, False),
    "bf16 compiled": ({"precision": "bf16", "compile": True}, False),
}


def time_steps(config, out: Path, channels_last: bool, warmup: int, steps: int) -> dict:
    """Seconds per optimizer step and the time the warm-up steps took (compilation included)."""
    trainer = Trainer(config, out, progress=False)
    if channels_last:
        trainer.net.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    for step in range(warmup):
        trainer._train_step(step)
    timed = time.perf_counter()
    for step in range(warmup, warmup + steps):
        trainer._train_step(step)
    end = time.perf_counter()
    return {"step_ms": 1000 * (end - timed) / steps, "warmup_s": timed - start,
            "images_per_s": steps * config.optim.batch_size / (end - timed)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/cpu-speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "steps": args.steps, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        Trainer(load_config("tiny-teacher", {"steps": 1}), teacher_dir, progress=False).save()  # a teacher to distill
        for kind, preset in (("teacher", "tiny-teacher"), ("cd S=4", "tiny-cd")):
            for name in args.variants:
                overrides, channels_last = VARIANTS[name]
                config = load_config(preset,
                                     {**overrides, "teacher": str(teacher_dir)} if kind != "teacher" else overrides)
                row = {"kind": kind, "variant": name, **time_steps(config, Path(tmp) / f"{kind}-{name}",
                                                                   channels_last, args.warmup, args.steps)}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    for row in results["rows"]:
        base = next(r for r in results["rows"] if r["kind"] == row["kind"] and r["variant"] == "fp32")
        row["speedup"] = base["step_ms"] / row["step_ms"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("| kind | variant | ms/step | images/s | speed-up over fp32 eager | warm-up s |\n|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['kind']} | {r['variant']} | {r['step_ms']:.0f} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x | "
              f"{r['warmup_s']:.0f} |")


if __name__ == "__main__":
    main()
