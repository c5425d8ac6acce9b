"""What a LoRA student saves, measured (issue 34, item 3): the peak memory of training a teacher, a full MCM CD
student and a LoRA student of one UNet2DConditionModel, each in a fresh process, beside `mcm-fast memory`'s
estimate from the configs.

The network is Stable Diffusion 1.5's UNet at half its width (block_out_channels 160-320-640-640, two ResNet and
attention layers per block: about 0.2B parameters) in the tiny pipeline (mcm_fast.integrations.tiny: its VAE,
CLIP text encoder and scheduler), so that a full student's six fp32 copies (student, teacher, EMA, gradients,
AdamW's two moments) fit this machine. A cache of N_IMAGES captioned MNIST digits is encoded through it; each run
takes STEPS optimizer steps at BATCH through `mcm-fast train` (bf16 autocast on this CPU) in its own process,
whose peak resident set size (ru_maxrss, from os.wait4) is its memory; a process that imports the same modules and
maps the cache without training is the baseline that every run's training memory is measured above. Rows go to
--out/seed0/{run}/scores.json (a run measured once is kept; rerun to continue), the ledger's table lora_memory.

    python -m experiments.lora_memory --out runs/lora_memory --threads 1
    python -m experiments.results add lora_memory runs/lora_memory && python -m experiments.results render
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.mnist_tables import scores_of
from experiments.text_to_image import NETWORK, ON_BETAS, _cli
from mcm_fast.data.captions import DIGIT_PROMPTS
from mcm_fast.data.images import load_mnist
from mcm_fast.integrations.lora import TARGETS
from mcm_fast.integrations.memory import GIB

HALF_SD15 = {"block_out_channels": [160, 320, 640, 640], "layers_per_block": 2, "attention_head_dim": 8,
             "norm_num_groups": 32, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
RANK = 64  # the LoRA rank of docs/configs/sd15-mcm-lora.yaml


@dataclass(frozen=True)
class Scale:
    unet: dict  # over the tiny pipeline's UNET
    images: int  # captioned digits in the cache
    batch: int
    steps: int


SCALES = {"full": Scale(HALF_SD15, 512, 16, 3),
          "smoke": Scale({"block_out_channels": [32, 64], "norm_num_groups": 8}, 32, 4, 1)}
RUNS = {  # name: (what trains, config options over the common ones)
    "teacher": ("the teacher (v-loss): network, EMA, gradients, AdamW", {"kind": "teacher"}),
    "full-student": ("a full MCM CD student: its network, the teacher, EMA, gradients, AdamW", {"kind": "cd"}),
    "lora-student": (f"a LoRA MCM CD student (rank {RANK}): one base network, the adapters' EMA, gradients, AdamW",
                     {"kind": "cd", "lora_rank": RANK, "lora_targets": list(TARGETS)}),
}
BASELINE = """
import sys
from mcm_fast.data.splits import training_data
from mcm_fast.integrations.lora import import_peft
from mcm_fast.models.diffusers_nets import import_diffusers
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import Trainer  # noqa: F401 (what a run imports)
import_peft(), import_diffusers().UNet2DConditionModel
config = load_config(sys.argv[1])
print(len(training_data(config.data, config.seed)), "examples")
"""


def pipeline(out: Path, scale: Scale) -> Path:
    """The tiny pipeline folder with scale's UNet, and the cache of scale.images captioned digits it encoded."""
    from mcm_fast.integrations.tiny import tiny_text_pipeline

    folder, cache = out / "pipeline", out / "cache"
    if not (folder / "model_index.json").is_file():
        tiny_text_pipeline(out / "pipeline.partial", unet=scale.unet).rename(folder)
    if not (cache / "manifest.json").is_file():
        digits = load_mnist("train", 16)
        source = out / "digits.npz"
        np.savez(source, x=(digits.images[:scale.images].numpy() * 127.5 + 127.5).round().astype(np.uint8),
                 text=np.array([DIGIT_PROMPTS[k] for k in digits.labels[:scale.images].tolist()]))
        _cli(["encode", "--pipeline", str(folder), "--data", str(source), "--out", str(cache), "--threads", "1"])
    return folder


def peak_gib(argv: list[str], threads: int | None) -> float:
    """The peak resident set size, GiB, of a fresh Python process running argv."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    process = subprocess.Popen([sys.executable, *argv], env=env)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:3])}: exit status {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss * 1024 / GIB  # kilobytes on Linux


def run_config(name: str, folder: Path, cache: Path, scale: Scale) -> dict:
    """The training config of a run: the teacher from scratch on the pipeline's network and schedule, the students
    of the pipeline folder; every grid and evaluation as small as allowed."""
    common = {"data": {"name": "latents", "path": str(cache), "resolution": None}, "steps": scale.steps,
              "optim": {"batch_size": scale.batch, "warmup": 1}, "save_every": 0, "eval_samples": 4,
              "sample_steps": 4, **RUNS[name][1]}
    if name == "teacher":
        return {**common, "model": "diffusers-unet2d-cond", "model_options": {**NETWORK, **scale.unet}, **ON_BETAS}
    return {**common, "teacher": str(folder), "objective": {"student_steps": 4}}


def measure(out: Path, scale: Scale, threads: int | None) -> dict[str, list[dict]]:
    """{run: [its row]}: the baseline's peak memory, and each run's with `mcm-fast memory`'s estimate of its
    training memory (bf16 activations; a teacher run holds no frozen teacher: the full student's less one copy)."""
    folder, cache, root = pipeline(out, scale), out / "cache", out / "seed0"
    files = {name: out / f"{name}.json" for name in RUNS}
    for name, file in files.items():
        file.write_text(json.dumps(run_config(name, folder, cache, scale), indent=1) + "\n")
    rows = {"baseline": scores_of(root / "baseline", lambda: [
        {"peak_gib": peak_gib(["-c", BASELINE, str(files["lora-student"])], threads)}])}
    for name in RUNS:
        rows[name] = scores_of(root / name, lambda name=name: measure_run(name, files[name], folder, scale, threads))
    return rows


def measure_run(name: str, file: Path, folder: Path, scale: Scale, threads: int | None) -> list[dict]:
    """[the row] of one run: its peak memory and the estimate."""
    from mcm_fast.commands.memory import memory

    peak = peak_gib(["-m", "mcm_fast", "train", "--config", str(file), "--out", str(file.with_suffix("")),
                     "--no-progress", *(["--threads", str(threads)] if threads else [])], threads)
    estimate = memory(folder, scale.batch, RUNS[name][1].get("lora_rank"), "bf16", echo=lambda *_: None)
    parameters = estimate["parameters (M)"] * 1e6
    total = estimate["total"] - (parameters * 4 / GIB if name == "teacher" else 0)
    return [{"peak_gib": peak, "estimate_gib": total, "parameters": round(parameters)}]


def table(rows: list[dict]) -> str:
    """Markdown: each run's peak and training memory (above the baseline process) and the estimate (rows: ledger
    or score rows with their run)."""
    found = {row["run"]: row for row in rows}
    base = found["baseline"]["peak_gib"]
    lines = [f"The baseline process (imports, the cache): {base:.2f} GiB.\n\n",
             "| run | what it holds | parameters | peak GiB | training GiB (peak - baseline) | estimated GiB |\n",
             "|---|---|---|---|---|---|\n"]
    for name, (holds, _) in RUNS.items():
        if name in found:
            row = found[name]
            lines.append(f"| {name} | {holds} | {row['parameters'] / 1e6:.1f}M | {row['peak_gib']:.2f} | "
                         f"{row['peak_gib'] - base:.2f} | {row['estimate_gib']:.2f} |\n")
    return "".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lora_memory"))
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    print(table([{**row, "run": name} for name, found in measure(args.out, SCALES[args.scale], args.threads).items()
                 for row in found]))


if __name__ == "__main__":
    main()
