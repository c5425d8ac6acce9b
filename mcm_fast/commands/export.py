"""`mcm-fast export`: a distilled student for a stock diffusers pipeline. A LoRA run gives its adapters
(pytorch_lora_weights.safetensors) and an MCMScheduler config in one folder:

    pipe.load_lora_weights(DIR); pipe.scheduler = MCMScheduler.from_pretrained(DIR)

and a full student of a pipeline-folder teacher a whole pipeline folder, its network the student's, its scheduler/
the teacher's (so that the stock pipeline loads it as it loads the teacher's) and the MCMScheduler config beside
model_index.json (pipe.scheduler = MCMScheduler.from_pretrained(DIR), as for a LoRA). Either samples with
num_inference_steps=S in S network calls what mf.sample gives from the same noise and prompt.

A text teacher trained here on a latent cache (mcm-fast encode) exports as the pipeline folder that encoded the
cache, its network the teacher's and diffusers' DDPMScheduler on the run's betas (a UNet) or its
FlowMatchEulerDiscreteScheduler with the run's shift (an SD3 transformer): the stock pipeline loads it, and it is
a teacher (--set teacher=DIR) that a LoRA student distills.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcm_fast.integrations.pipelines import (
    PREDICTION_TYPES,
    SCHEDULER_CONFIG,
    UNET_WEIGHTS,
    is_pipeline_folder,
    network_folder,
)
from mcm_fast.models.diffusers_nets import TEXT_MODELS
from mcm_fast.train.build import load_model

STUDENT_KINDS = ("cd", "ct", "direct")


def scheduler_config(config) -> dict:
    """The DDPM settings a run samples on: its pipeline-folder teacher's scheduler config, else its discrete
    schedule's betas with its prediction type."""
    if config.teacher is not None and is_pipeline_folder(config.teacher):
        return json.loads((Path(config.teacher) / SCHEDULER_CONFIG).read_text())
    if config.schedule != "discrete":
        raise ValueError(f"--ckpt: a diffusers pipeline samples on DDPM betas; expected a run on the discrete "
                         f"schedule, got schedule {config.schedule!r}")
    names = {ours: theirs for theirs, ours in PREDICTION_TYPES.items()}
    return {**config.schedule_options, "prediction_type": names[config.prediction]}


def export(ckpt, out, echo=print) -> Path:
    """Writes the EMA student of run ckpt for diffusers into out (see the module docstring); returns out."""
    model, kind, _ = load_model(ckpt)
    config, out = kind.config, Path(out)
    if config.kind == "teacher":
        return export_teacher(model, config, out, echo)
    if config.kind not in STUDENT_KINDS:
        raise ValueError(f"--ckpt: expected a multistep consistency student (kind {', '.join(STUDENT_KINDS)}) or a "
                         f"text teacher, got a {config.kind!r} run")
    settings = scheduler_config(config)
    boundaries = config.objective.boundaries
    if config.lora_rank is not None:
        from mcm_fast.integrations.lora import export_lora

        export_lora(model.net, out, settings, boundaries)
        echo(f"{out}: LoRA rank {config.lora_rank} of {config.teacher}; pipe.load_lora_weights('{out}'), "
             f"pipe.scheduler = MCMScheduler.from_pretrained('{out}')")
        return out
    if config.teacher is None or not is_pipeline_folder(config.teacher):
        raise ValueError(f"--ckpt: a full student exports as its teacher's pipeline folder; expected a run whose "
                         f"teacher is a diffusers pipeline folder, got teacher {config.teacher!r}")
    from mcm_fast.integrations.diffusers import MCMScheduler

    copy_pipeline(config.teacher, out, model.net.net)
    MCMScheduler.from_settings(settings, boundaries).save_pretrained(out)
    echo(f"{out}: the pipeline of {config.teacher} with the student's network; pipe.scheduler = "
         f"MCMScheduler.from_pretrained('{out}')")
    return out


def export_teacher(model, config, out: Path, echo=print) -> Path:
    """A text teacher of a latent cache as the cache's pipeline folder with the teacher's network and the scheduler
    of its schedule: DDPMScheduler on its betas for a UNet, FlowMatchEulerDiscreteScheduler with its shift for an
    SD3 transformer (see the module docstring)."""
    if config.model not in TEXT_MODELS or config.data.name != "latents":
        raise ValueError(f"--ckpt: a teacher exports as a text-to-image pipeline folder; expected a "
                         f"{' or '.join(TEXT_MODELS)} teacher of a latent cache (data.name latents), got model "
                         f"{config.model!r} on data {config.data.name!r}")
    if config.time_input != "native":
        raise ValueError(f"--ckpt: a pipeline feeds its network diffusers' timesteps; expected a teacher trained "
                         f"with time_input native, got {config.time_input!r}")
    from mcm_fast.data.latents import read_manifest
    from mcm_fast.models.diffusers_nets import import_diffusers

    diffusers = import_diffusers()
    if config.model == "diffusers-sd3":
        if config.schedule != "flow" or config.prediction != "flow":
            raise ValueError(f"--ckpt: an SD3 pipeline samples velocity on the rectified flow; expected a teacher "
                             f"with schedule flow and prediction flow, got {config.schedule!r} and "
                             f"{config.prediction!r}")
        options = config.schedule_options
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
            shift=float(options.get("shift", 1.0)), num_train_timesteps=int(options.get("time_scale", 1000)))
    else:
        scheduler = diffusers.DDPMScheduler(**scheduler_config(config), clip_sample=False,
                                            steps_offset=1)  # latents: no clipping
    pipeline = read_manifest(config.data.path)["pipeline"]
    copy_pipeline(pipeline, out, model.net.net)
    scheduler.save_pretrained(out / "scheduler")
    name = type(scheduler).__name__
    index = json.loads((out / "model_index.json").read_text())
    (out / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", name]}, indent=2) + "\n")
    echo(f"{out}: the pipeline of {pipeline} with the teacher's network and a {name}; "
         f"{index.get('_class_name', 'DiffusionPipeline')}.from_pretrained('{out}')")
    return out


def copy_pipeline(source, out: Path, network) -> None:
    """source's pipeline folder copied to the new folder out, its denoising network's (unet/ or transformer/)
    weights and config network's."""
    if out.exists():
        raise ValueError(f"--out: {out} exists; expected a new folder for the pipeline")
    name = network_folder(source).name
    shutil.copytree(source, out, ignore=lambda folder, names: [UNET_WEIGHTS] if Path(folder).name == name else [])
    network.save_pretrained(out / name, safe_serialization=True)
