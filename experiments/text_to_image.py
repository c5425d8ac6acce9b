"""Issue 34's proof at a size that trains here: a text-to-image latent diffusion model of captioned MNIST built
from the real Stable Diffusion 1.x classes, its teacher trained and its 4-step MCM LoRA distilled through the
command line, both sampled by a stock diffusers StableDiffusionPipeline.

1. pipeline: the tiny pipeline folder (mcm_fast.integrations.tiny: AutoencoderKL, CLIP text encoder and
   tokenizer, UNet2DConditionModel, DDPM's scaled-linear betas), its VAE then trained here on MNIST's training
   digits at 16x16 (L2 reconstruction and a small KL; scaling_factor = 1 / the latents' std, as SD's VAE has).
2. cache: `mcm-fast encode --data mnist`: every training digit with its caption ("a handwritten digit seven").
3. teacher: `mcm-fast train` of the pipeline's UNet from scratch on the cache (epsilon, the pipeline's betas and
   timesteps; prompts dropped to the empty prompt 10% of the time), then `mcm-fast export` as a pipeline folder.
4. student: `mcm-fast train` of a 4-step MCM CD LoRA of that folder (LCM-LoRA's targets), `mcm-fast export`.
5. scores: the stock pipeline samples SCORED_N latents from the same noises and prompts (labels 0-9 cycled):
   the teacher with diffusers' DDIMScheduler and DPMSolverMultistepScheduler (DPM-Solver++) at several steps, the
   student with load_lora_weights and MCMScheduler at 4; decoded by the VAE, scored in FD-MNIST, precision and
   recall against as many MNIST test digits. Floors: as many training digits, and their VAE reconstructions.

--family sd3 does the same with an SD3-style pipeline (tiny_sd3_pipeline with a larger transformer, the VAE
trained in step 1, no T5): the transformer trained from scratch on the rectified flow with shift 3 (velocity,
timesteps 1000 u), exported with its FlowMatchEulerDiscreteScheduler, a LoRA of both attention streams; the
stock StableDiffusion3Pipeline samples the teacher with FlowMatchEulerDiscreteScheduler.

Everything lives under --out/seed{N}/ (sd3/ for SD3) and every stage resumes or is skipped when done: rerun the
same command. The scores go to the ledger with `python -m experiments.results add text_to_image
runs/text_to_image`.

    python -m experiments.text_to_image --out runs/text_to_image --threads 2
    python -m experiments.text_to_image --out runs/text_to_image --threads 2 --family sd3
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.mnist_tables import scores_of
from mcm_fast.cli import main as cli
from mcm_fast.data.batches import batch_indices
from mcm_fast.data.captions import DIGIT_PROMPTS
from mcm_fast.data.images import load_mnist
from mcm_fast.integrations.lora import JOINT_TARGETS, LCM_TARGETS
from mcm_fast.integrations.pipelines import BETA_KEYS
from mcm_fast.integrations.tiny import SCHEDULER, SD3_TRANSFORMER, UNET, tiny_sd3_pipeline, tiny_text_pipeline
from mcm_fast.metrics.evaluate import score
from mcm_fast.metrics.features import mnist_features
from mcm_fast.models.diffusers_nets import import_diffusers


@dataclass(frozen=True)
class Scale:
    vae_steps: int
    teacher_steps: int
    student_steps: int
    scored_n: int
    teacher_budgets: tuple = (4, 8, 16, 64)  # the stock schedulers' steps for the teacher


SCALES = {"full": Scale(2000, 2500, 1200, 2000), "smoke": Scale(4, 3, 2, 16, (2, 4))}
STUDENT_S = 4
EVAL_SEED = 1
BATCH = 64  # the teacher's and the student's (the VAE trains at VAE_BATCH)
VAE_BATCH = 128
VAE_KL = 1e-6  # the KL weight against L2 reconstruction (per element), small as in Stable Diffusion's VAE
DERIVED = ("sample_size", "in_channels", "out_channels", "cross_attention_dim", "joint_attention_dim",
           "pooled_projection_dim")  # a network's sizes that come from the cache
NETWORK = {k: v for k, v in UNET.items() if k not in DERIVED}
SD3_NETWORK = {**SD3_TRANSFORMER, "num_layers": 5, "num_attention_heads": 4, "attention_head_dim": 16,
               "caption_projection_dim": 64}  # wider and deeper than the tests' (0.74M parameters; the UNet 0.79M)
ON_BETAS = {"schedule": "discrete", "schedule_options": {k: SCHEDULER[k] for k in BETA_KEYS if k in SCHEDULER},
            "prediction": "v", "time_input": "native"}  # the pipeline's DDPM betas and timesteps; v as SD 2.x
ON_FLOW = {"schedule": "flow", "schedule_options": {"shift": 3.0, "time_scale": 1000.0}, "prediction": "flow",
           "time_input": "native"}  # SD3's: the rectified flow with shift 3, timesteps 1000 u, velocity


def teacher_config(cache: Path, scale: Scale, family: str = "sd1") -> dict:
    """The text teacher: the tiny pipeline's network from scratch on the cache, on the pipeline's schedule."""
    network = {"model": "diffusers-unet2d-cond", "model_options": NETWORK, **ON_BETAS} if family == "sd1" else \
        {"model": "diffusers-sd3", "model_options": {k: v for k, v in SD3_NETWORK.items() if k not in DERIVED},
         **ON_FLOW}
    return {"kind": "teacher", **network,
            "data": {"name": "latents", "path": str(cache), "resolution": None, "holdout": 0.05},
            "optim": {"lr": 5e-4, "batch_size": BATCH, "warmup": 200, "ema_decay": 0.999},
            "steps": scale.teacher_steps, "cooldown": scale.teacher_steps // 4, "save_every": 250,
            "eval_every": max(scale.teacher_steps // 4, 1), "eval_samples": 200, "sample_steps": 64}


def student_config(cache: Path, teacher: Path, scale: Scale, family: str = "sd1") -> dict:
    """The 4-step MCM CD LoRA of the exported teacher (the tiny-cd preset's objective): LCM-LoRA's targets on a
    UNet, both attention streams and feed-forwards on an SD3 transformer."""
    return {"preset": "tiny-cd", "teacher": str(teacher), "lora_rank": 16,
            "lora_targets": list(LCM_TARGETS if family == "sd1" else JOINT_TARGETS),
            "data": {"name": "latents", "path": str(cache), "resolution": None, "holdout": 0.05},
            "objective": {"student_steps": STUDENT_S}, "optim": {"lr": 5e-4, "grad_clip": 1.0, "batch_size": BATCH},
            "steps": scale.student_steps, "cooldown": scale.student_steps // 4, "save_every": 250,
            "eval_every": max(scale.student_steps // 4, 1), "eval_samples": 200, "sample_steps": STUDENT_S}


def train_vae(folder: Path, steps: int, seed: int = 0) -> dict:
    """Trains folder/vae on MNIST's training digits at its sample size; its record (vae/training.json) is written
    last and marks it done."""
    record = folder / "vae" / "training.json"
    if record.is_file():
        return json.loads(record.read_text())
    vae = import_diffusers().AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True,
                                                           use_safetensors=True, low_cpu_mem_usage=False)
    digits = load_mnist("train", vae.config.sample_size).images
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        x = digits[batch_indices(len(digits), VAE_BATCH, step, seed)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        loss = (reconstruction - x).square().mean() + VAE_KL * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        posterior = vae.encode(digits[:2000]).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    scaling = 1 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    done = {"steps": steps, "batch": VAE_BATCH, "kl_weight": VAE_KL, "scaling_factor": scaling,
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.perf_counter() - start}
    record.write_text(json.dumps(done, indent=1) + "\n")
    return done


def stock_pipeline(folder: Path, lora: Path | None = None):
    """The stock pipeline class that folder's model_index.json names, loaded from it (an SD3 folder without T5 with
    text_encoder_3=None), with lora's adapters."""
    diffusers = import_diffusers()
    index = json.loads((folder / "model_index.json").read_text())
    without = {k: None for k in ("text_encoder_3", "tokenizer_3") if k in index and index[k][0] is None}
    pipe = getattr(diffusers, index["_class_name"]).from_pretrained(folder, local_files_only=True,
                                                                    use_safetensors=True, **without)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
    return pipe


def stock_latents(folder: Path, scheduler, steps: int, prompts: list[str], noise: torch.Tensor,
                  lora: Path | None = None) -> torch.Tensor:
    """The stock pipeline of folder (with lora's adapters) sampling latents from noise for prompts with
    scheduler, guidance_scale 1 (one network call per step), in batches."""
    pipe = stock_pipeline(folder, lora)
    pipe.scheduler = scheduler
    return torch.cat([pipe(prompts[i:i + 250], num_inference_steps=steps, guidance_scale=1.0,
                           latents=noise[i:i + 250].clone(), output_type="latent").images
                      for i in range(0, len(prompts), 250)])


def scores(root: Path, scale: Scale) -> list[dict]:
    """FD-MNIST, precision and recall of the stock pipeline's samples (the teacher's and the student's) and of
    the floors, against scale.scored_n MNIST test digits; cached in each run's scores.json."""
    diffusers = import_diffusers()
    from mcm_fast.integrations.diffusers import MCMScheduler
    from mcm_fast.integrations.pipelines import SCHEDULER_CONFIG, network_folder
    from mcm_fast.integrations.text_to_image import TextToImageParts

    n, folder = scale.scored_n, root / "teacher-pipeline"
    parts = TextToImageParts(folder, what="--out")
    test = load_mnist("test", parts.image_shape[1])
    reference = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(EVAL_SEED))[:n]]
    generator = torch.Generator().manual_seed(EVAL_SEED)
    network = json.loads((network_folder(folder) / "config.json").read_text())
    noise = torch.randn((n, network["in_channels"], network["sample_size"], network["sample_size"]),
                        generator=generator)
    prompts = [DIGIT_PROMPTS[k % 10] for k in range(n)]
    fd = lambda images: score(images.clamp(-1, 1), reference, mnist_features, "mnist")  # noqa: E731
    settings = json.loads((folder / SCHEDULER_CONFIG).read_text())
    flow = settings["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    schedulers = {"flow-euler": diffusers.FlowMatchEulerDiscreteScheduler} if flow else \
        {"ddim": diffusers.DDIMScheduler, "dpm-solver++": diffusers.DPMSolverMultistepScheduler}
    config = getattr(diffusers, settings["_class_name"]).from_pretrained(folder / "scheduler").config

    def teacher():
        return [{"steps": s, "sampler": name, "calls": s, **fd(parts.decode(stock_latents(
                    folder, cls.from_config(config), s, prompts, noise)))}
                for name, cls in schedulers.items() for s in scale.teacher_budgets]

    def student():
        lora = root / "lora"
        latents = stock_latents(folder, MCMScheduler.from_pretrained(lora), STUDENT_S, prompts, noise, lora)
        return [{"steps": STUDENT_S, "sampler": "mcm-lora", "calls": STUDENT_S, **fd(parts.decode(latents))}]

    def floors():
        train = load_mnist("train", parts.image_shape[1]).images
        digits = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(EVAL_SEED))[:n]]
        reconstructions = parts.decode(parts.encode_images(digits, torch.Generator().manual_seed(EVAL_SEED)))
        return [{"sampler": "data", **fd(digits)}, {"sampler": "vae", **fd(reconstructions)}]

    return [row for run, compute in (("teacher", teacher), ("student", student), ("floor", floors))
            for row in scores_of(root / run, compute)]


def pipeline_of(out: Path, scale: Scale, seed: int, family: str) -> Path:
    """The family's pipeline folder with the VAE trained here (for SD3 the one step 1 trained, copied in)."""
    first = out / f"seed{seed}" / "pipeline"
    if not (first / "model_index.json").is_file():
        tiny_text_pipeline(first, seed=seed)
    print(f"VAE: {train_vae(first, scale.vae_steps, seed)}", flush=True)
    if family == "sd1":
        return first
    folder = out / f"seed{seed}" / family / "pipeline"
    if not (folder / "model_index.json").is_file():
        partial = folder.with_name("pipeline.partial")
        shutil.rmtree(partial, ignore_errors=True)
        tiny_sd3_pipeline(partial, seed=seed, transformer=SD3_NETWORK)
        shutil.rmtree(partial / "vae")
        shutil.copytree(first / "vae", partial / "vae")
        partial.rename(folder)
    return folder


def run(out: Path, scale: Scale, seed: int, threads: int | None, family: str = "sd1") -> list[dict]:
    """Every stage of the module docstring under out/seed{seed} (sd3/ below it for SD3); returns the scores."""
    pipeline = pipeline_of(out, scale, seed, family)
    root, common = pipeline.parent, ["--threads", str(threads)] if threads else []
    cache = root / "cache"
    _cli(["encode", "--pipeline", str(pipeline), "--data", "mnist", "--out", str(cache), "--seed", str(seed),
          *common])
    for name, config in (("teacher", teacher_config(cache, scale, family)),
                         ("student", student_config(cache, root / "teacher-pipeline", scale, family))):
        file = root / f"{name}.json"
        file.write_text(json.dumps({**config, "seed": seed}, indent=1) + "\n")
        _cli(["train", "--config", str(file), "--out", str(root / name), "--no-progress", *common])
        exported = root / ("teacher-pipeline" if name == "teacher" else "lora")
        if not exported.exists():
            _cli(["export", "--ckpt", str(root / name), "--out", str(exported)])
    return scores(root, scale)


def _cli(argv: list[str]) -> None:
    """One mcm-fast command; a failure stops the study."""
    print("mcm-fast " + " ".join(argv), flush=True)
    if cli(argv) != 0:
        raise SystemExit(f"mcm-fast {argv[0]} failed")


def table(rows: list[dict]) -> str:
    """Markdown: FD-MNIST, precision and recall of each sampler of the stock pipelines and of the floors (the SD3
    arm's rows are those whose run is under sd3/)."""
    names = {"mcm-lora": "MCM LoRA student (MCMScheduler)", "ddim": "teacher, DDIMScheduler",
             "dpm-solver++": "teacher, DPMSolverMultistepScheduler",
             "flow-euler": "teacher, FlowMatchEulerDiscreteScheduler", "data": "MNIST training digits (the floor)",
             "vae": "their VAE reconstructions (the VAE's floor)"}
    order, rows = list(names), [row for row in rows if row["sampler"] in names]
    lines = ["| pipeline | model (stock pipeline) | steps (network calls) | FD-MNIST | precision | recall |\n",
             "|---|---|---|---|---|---|\n"]
    arm = lambda row: "SD3" if str(row.get("run", "")).startswith("sd3/") else "SD 1.x"  # noqa: E731
    for row in sorted(rows, key=lambda r: (arm(r) == "SD3", order.index(r["sampler"]), r.get("steps") or 0)):
        lines.append(f"| {arm(row)} | {names[row['sampler']]} | {row.get('steps') or '-'} | {row['fd_mnist']:.1f} | "
                     f"{row['precision']:.3f} | {row['recall']:.3f} |\n")
    return "".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/text_to_image"))
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--family", choices=("sd1", "sd3"), default="sd1", help="the pipeline's kind")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.out, SCALES[args.scale], args.seed, args.threads, args.family)
    print(table([{**row, "run": f"{args.family}/"} for row in rows]), flush=True)


if __name__ == "__main__":
    main()
