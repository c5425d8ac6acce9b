"""diffusers pipeline folders (save_pretrained's layout: unet/, scheduler/) as teachers: recognized, read into
the package's config (network, schedule, prediction, time input) and their UNet loaded from safetensors.

Recognizing and reading a folder needs no diffusers; loading the UNet needs the optional extra.
"""
from __future__ import annotations

import json
from pathlib import Path

from mcm_fast.models.diffusers_nets import PRIVATE_KEYS, DiffusersNet, import_diffusers

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x"}  # diffusers' name -> the package's
BETA_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")  # schedule_from_betas's
UNET_CONFIG, SCHEDULER_CONFIG = "unet/config.json", "scheduler/scheduler_config.json"  # in a pipeline folder
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"  # in unet/
TOKENIZER_CONFIG = "tokenizer/tokenizer_config.json"  # a text-to-image pipeline's
UNETS = {"UNet2DModel": "diffusers-unet2d", "UNet2DConditionModel": "diffusers-unet2d-cond"}  # class -> model


def prediction_of(prediction_type) -> str:
    """The package's prediction for a diffusers prediction_type."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: expected one of {tuple(PREDICTION_TYPES)}, got {prediction_type!r}")
    return PREDICTION_TYPES[prediction_type]


def is_pipeline_folder(path: str | Path) -> bool:
    """Whether path is a diffusers pipeline folder with a UNet and a scheduler (save_pretrained's layout); one with
    a unet/ but no scheduler config is an error naming the file it lacks."""
    path = Path(path)
    if not (path / UNET_CONFIG).is_file():
        return False
    if not (path / SCHEDULER_CONFIG).is_file():
        raise FileNotFoundError(f"{path}: looks like a diffusers pipeline folder (unet/config.json) but has no "
                                f"scheduler/scheduler_config.json; expected both, as save_pretrained writes them")
    return True


def pipeline_settings(path) -> tuple[dict, dict]:
    """(config values, data info) of a diffusers pipeline folder (unet/config.json, scheduler/scheduler_config.json):
    its UNet2DModel (model diffusers-unet2d) or text-conditioned UNet2DConditionModel (diffusers-unet2d-cond), its
    betas as the discrete schedule, its prediction_type and the timestep as the network's time; the info gives
    the images' (or latents') [C, H, W], the classes (num_class_embeds - 1, the last being the null class) and for
    text the prompt embeddings' [L, D] (the tokenizer's length, the UNet's cross_attention_dim)."""
    folder = Path(path)
    unet, scheduler = (json.loads((folder / name).read_text()) for name in (UNET_CONFIG, SCHEDULER_CONFIG))
    if unet.get("_class_name") not in UNETS:
        raise ValueError(f"teacher: expected one of {tuple(UNETS)} in {folder / UNET_CONFIG}, got "
                         f"{unet.get('_class_name')!r}")
    size = unet.get("sample_size")
    height, width = (size, size) if isinstance(size, int) else size
    settings = {"model": UNETS[unet["_class_name"]],
                "model_options": {k: v for k, v in unet.items() if k not in PRIVATE_KEYS},
                "schedule": "discrete", "schedule_options": {k: scheduler[k] for k in BETA_KEYS if k in scheduler},
                "prediction": prediction_of(scheduler.get("prediction_type", "epsilon")), "time_input": "native"}
    classes = (unet.get("num_class_embeds") or 1) - 1
    info = {"shape": [unet.get("in_channels", 3), height, width], "num_classes": classes}
    if unet["_class_name"] == "UNet2DConditionModel":
        tokenizer = folder / TOKENIZER_CONFIG
        if not tokenizer.is_file():
            raise FileNotFoundError(f"teacher: no {tokenizer}; a text-conditioned pipeline needs its tokenizer (the "
                                    f"prompts' length)")
        info = {**info, "num_classes": 0,
                "text": [json.loads(tokenizer.read_text())["model_max_length"], unet["cross_attention_dim"]]}
    return settings, info


def safetensors_weights(folder: Path, name: str, what: str) -> Path:
    """folder/name, a component's safetensors weights; a component with only a pickled .bin is refused (never
    unpickled) with the command that converts it, a missing one named."""
    weights = folder / name
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        if pickled:
            raise ValueError(f"{what}: {folder} holds {pickled[0]} (a pickle) and no {name}; mcm_fast loads "
                             f"safetensors only: convert it where you trust the file with "
                             f"from_pretrained('{folder}').save_pretrained('{folder}')")
        raise FileNotFoundError(f"{what}: no {weights} (the pipeline's weights, as save_pretrained writes them)")
    return weights


def load_pipeline_unet(path) -> DiffusersNet:
    """The UNet of a diffusers pipeline folder as a raw network: its safetensors weights only (a pickled .bin is
    refused, never unpickled), nothing downloaded."""
    folder = Path(path) / "unet"
    safetensors_weights(folder, UNET_WEIGHTS, "teacher")
    name = json.loads((folder / "config.json").read_text())["_class_name"]
    unet = getattr(import_diffusers(), name).from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                            low_cpu_mem_usage=False)  # True needs accelerate
    return DiffusersNet(unet)
