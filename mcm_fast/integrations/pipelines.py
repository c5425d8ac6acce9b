"""diffusers pipeline folders (save_pretrained's layout: unet/ or transformer/, scheduler/) as teachers: recognized,
read into the package's config (network, schedule, prediction, time input) and their network loaded from
safetensors. UNets on DDPM betas (Stable Diffusion 1.x/2.x, DDPM/DDIM pipelines), SD3's flow transformer on
FlowMatchEulerDiscreteScheduler (the rectified flow, its shift, timesteps 1000 u).

Recognizing and reading a folder needs no diffusers; loading the UNet needs the optional extra.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mcm_fast.data.latents import file_sha256
from mcm_fast.models.diffusers_nets import PRIVATE_KEYS, DiffusersNet, import_diffusers

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x", "flow_prediction": "flow"}  # -> ours
BETA_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")  # schedule_from_betas's
NETWORK_FOLDERS = ("unet", "transformer")  # where a pipeline keeps its denoising network
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"  # in a pipeline folder
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"  # in unet/ or transformer/
TOKENIZER_CONFIG = "tokenizer/tokenizer_config.json"  # a text-to-image pipeline's
NETWORKS = {"UNet2DModel": "diffusers-unet2d", "UNet2DConditionModel": "diffusers-unet2d-cond",
            "SD3Transformer2DModel": "diffusers-sd3"}  # class -> model
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
T5_LENGTH = 256  # the T5 tokens SD3's pipeline encodes (its max_sequence_length), zeros without a T5 encoder


def prediction_of(prediction_type) -> str:
    """The package's prediction for a diffusers prediction_type."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: expected one of {tuple(PREDICTION_TYPES)}, got {prediction_type!r}")
    return PREDICTION_TYPES[prediction_type]


def network_folder(path: str | Path) -> Path | None:
    """The folder of a pipeline's denoising network (unet/ or transformer/, with a config.json), or None."""
    return next((Path(path) / name for name in NETWORK_FOLDERS if (Path(path) / name / "config.json").is_file()),
                None)


def is_pipeline_folder(path: str | Path) -> bool:
    """Whether path is a diffusers pipeline folder with a denoising network and a scheduler (save_pretrained's
    layout); one with a network but no scheduler config is an error naming the file it lacks."""
    path = Path(path)
    network = network_folder(path)
    if network is None:
        return False
    if not (path / SCHEDULER_CONFIG).is_file():
        raise FileNotFoundError(f"{path}: looks like a diffusers pipeline folder ({network.name}/config.json) but has "
                                f"no scheduler/scheduler_config.json; expected both, as save_pretrained writes them")
    return True


def pipeline_settings(path) -> tuple[dict, dict]:
    """(config values, data info) of a diffusers pipeline folder: its UNet2DModel (model diffusers-unet2d) or
    text-conditioned UNet2DConditionModel (diffusers-unet2d-cond) on its betas (the discrete schedule) with its
    prediction_type, or its SD3Transformer2DModel (diffusers-sd3) on FlowMatchEulerDiscreteScheduler's rectified
    flow (its shift; velocity); the network sees the scheduler's timesteps. The info gives the images' (or
    latents') [C, H, W], the classes (num_class_embeds - 1, the last being the null class), for text the prompt
    embeddings' [L, D] and for SDXL and SD3 the pooled embeddings' width."""
    folder = Path(path)
    network_dir = network_folder(folder)
    network = json.loads((network_dir / "config.json").read_text())
    scheduler = json.loads((folder / SCHEDULER_CONFIG).read_text())
    name = network.get("_class_name")
    if name not in NETWORKS:
        raise ValueError(f"teacher: expected one of {tuple(NETWORKS)} in {network_dir / 'config.json'}, got {name!r}")
    size = network.get("sample_size")
    height, width = (size, size) if isinstance(size, int) else size
    settings = {"model": NETWORKS[name], "model_options": {k: v for k, v in network.items() if k not in PRIVATE_KEYS},
                "time_input": "native"}
    if name == "SD3Transformer2DModel" or scheduler.get("_class_name") == FLOW_SCHEDULER:
        settings.update(_flow_settings(folder, scheduler))
    else:
        settings.update({"schedule": "discrete", "schedule_options": {k: scheduler[k] for k in BETA_KEYS
                                                                        if k in scheduler},
                         "prediction": prediction_of(scheduler.get("prediction_type", "epsilon"))})
    classes = (network.get("num_class_embeds") or 1) - 1
    info = {"shape": [network.get("in_channels", 3), height, width], "num_classes": classes}
    if name in ("UNet2DConditionModel", "SD3Transformer2DModel"):
        tokenizer = folder / TOKENIZER_CONFIG
        if not tokenizer.is_file():
            raise FileNotFoundError(f"teacher: no {tokenizer}; a text-conditioned pipeline needs its tokenizer (the "
                                    f"prompts' length)")
        length = json.loads(tokenizer.read_text())["model_max_length"]
        if name == "UNet2DConditionModel":
            info = {**info, "num_classes": 0, "text": [length, network["cross_attention_dim"]]}
            if network.get("addition_embed_type") == "text_time":  # SDXL: pooled text_embeds beside 6 time_ids
                info["pooled"] = network["projection_class_embeddings_input_dim"] - 6 * network[
                    "addition_time_embed_dim"]
        else:
            info = {**info, "num_classes": 0, "text": [length + T5_LENGTH, network["joint_attention_dim"]],
                    "pooled": network["pooled_projection_dim"]}
    return settings, info


def _flow_settings(folder: Path, scheduler: dict) -> dict:
    """The schedule of a flow transformer's FlowMatchEulerDiscreteScheduler: the rectified flow with its shift,
    timesteps 1000 u, velocity; a resolution-dependent (dynamic) shift is refused."""
    if scheduler.get("_class_name") != FLOW_SCHEDULER:
        raise ValueError(f"teacher: a flow transformer samples with {FLOW_SCHEDULER}; expected it in "
                         f"{folder / SCHEDULER_CONFIG}, got {scheduler.get('_class_name')!r}")
    if scheduler.get("use_dynamic_shifting"):
        raise ValueError(f"teacher: {folder / SCHEDULER_CONFIG} shifts by resolution (use_dynamic_shifting); "
                         f"expected a fixed shift, as SD3's")
    return {"schedule": "flow", "prediction": "flow",
            "schedule_options": {"shift": float(scheduler.get("shift", 1.0)),
                                 "time_scale": float(scheduler.get("num_train_timesteps", 1000))}}


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


def weights_digest(folder: Path, what: str, name: str = "model.safetensors") -> str:
    """sha256 of a component's safetensors weights: of its one file (name), or of its shards' digests in name
    order (a large T5 or transformer); a component with pickled weights only is refused."""
    shards = sorted(folder.glob("*.safetensors"))
    if len(shards) <= 1:
        return file_sha256(safetensors_weights(folder, name, what))
    return hashlib.sha256(" ".join(f"{p.name}:{file_sha256(p)}" for p in shards).encode()).hexdigest()


def network_digest(path) -> str:
    """sha256 of the weights of a pipeline folder's denoising network."""
    return weights_digest(network_folder(path), "teacher", UNET_WEIGHTS)


def load_pipeline_network(path) -> DiffusersNet:
    """The denoising network (unet/ or transformer/) of a diffusers pipeline folder as a raw network: its
    safetensors weights only (a pickled .bin is refused, never unpickled), nothing downloaded."""
    folder = network_folder(path)
    safetensors_weights(folder, UNET_WEIGHTS, "teacher")
    name = json.loads((folder / "config.json").read_text())["_class_name"]
    net = getattr(import_diffusers(), name).from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                           low_cpu_mem_usage=False)  # True needs accelerate
    return DiffusersNet(net)
