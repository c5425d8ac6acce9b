"""Training and sampling throughput on a busy machine (issue 33): `mcm-fast bench` idle, beside one busy
single-threaded process, and as two jobs at once, with torch's fixed count of one thread per core (`--threads
N`, the behaviour before mcm_fast.threads) against the default that follows the free cores. Each cell is its own
process, so OpenMP starts fresh; the table (images/s and the ratio to the same setting idle) is printed and
written to runs/busy-machine.md. Run it on an otherwise idle machine:

    pytest benchmarks/test_busy_machine.py -s          # MCM_FAST_BUSY_CONFIGS=tiny-cd,mnist-teacher (default)
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = os.environ.get("MCM_FAST_BUSY_CONFIGS", "tiny-cd,mnist-teacher").split(",")
BATCH = {"tiny-cd": 128, "mnist-teacher": 32}
ITERS = {"tiny-cd": 10, "mnist-teacher": 3}  # the mnist UViT runs at ~16 images/s here: a cell in about a minute
BUSY = "import torch\ntorch.set_num_threads(1)\nx = torch.randn(256, 256)\nwhile True:\n    x = torch.tanh(x @ x)\n"


def bench_command(config: str, threads: int | None) -> list[str]:
    command = [sys.executable, "-m", "mcm_fast", "bench", "--config", config, "--batch", str(BATCH.get(config, 64)),
               "--iters", str(ITERS.get(config, 10)), "--steps", "4"]
    return command + ([] if threads is None else ["--threads", str(threads)])


def parse(output: str) -> dict:
    train = re.search(r"train step .*?: ([\d.]+) images/s", output)
    sample = re.search(r"sampling, 4 step\(s\): ([\d.]+) images/s", output)
    if not (train and sample):
        raise AssertionError(f"mcm-fast bench printed no throughput:\n{output}")
    return {"train": float(train.group(1)), "sample": float(sample.group(1))}


def measure(config: str, threads: int | None, scene: str) -> dict:
    """Images/s of one bench process in a scene: idle, busy (beside a busy thread) or two (two benches at once;
    the first one's)."""
    env = dict(os.environ)
    others = []
    if scene == "busy":
        others.append(subprocess.Popen([sys.executable, "-c", BUSY], env={**env, "OMP_NUM_THREADS": "1"}))
    if scene == "two":
        others.append(subprocess.Popen(bench_command(config, threads), cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
    try:
        run = subprocess.run(bench_command(config, threads), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=1800, check=True)
    finally:
        for other in others:
            other.kill()
            other.wait()
    return parse(run.stdout)


def test_throughput_idle_against_busy():
    cores = len(os.sched_getaffinity(0))
    lines = ["| config | threads | scene | train images/s | x idle | 4-step sampling images/s | x idle |",
             "|---|---|---|---|---|---|---|"]
    for config in CONFIGS:
        for threads in (cores, None):
            idle = None
            for scene in ("idle", "busy", "two"):
                row = measure(config, threads, scene)
                idle = idle or row
                label = f"{threads} (fixed)" if threads else "default (free cores)"
                lines.append(f"| {config} | {label} | {scene} | {row['train']:.0f} | "
                             f"{row['train'] / idle['train']:.2f} | {row['sample']:.0f} | "
                             f"{row['sample'] / idle['sample']:.2f} |")
                print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    (ROOT / "runs").mkdir(exist_ok=True)
    (ROOT / "runs" / "busy-machine.md").write_text(table)
    print("\n" + table)
