"""From a TrainConfig to modules: the schedule, the raw network, and through the run's kind (train.kinds) the
model around it and its sampler; `load_model` rebuilds any of them from a checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from mcm_fast.models import MLPNet, uvit
from mcm_fast.schedules import CosineSchedule
from mcm_fast.train.checkpoint import MANIFEST, check_state_dict, load_checkpoint
from mcm_fast.train.config import ConfigError, TrainConfig, load_config
from mcm_fast.train.kinds import KINDS


def make_schedule(config: TrainConfig) -> CosineSchedule:
    """The cosine logSNR schedule, shifted when config.schedule_shift = (r, res) (math.md §1)."""
    return CosineSchedule(shift=tuple(config.schedule_shift) if config.schedule_shift else None)


def make_net(config: TrainConfig, shape: tuple, num_classes: int) -> torch.nn.Module:
    """The raw network for data of shape (C, H, W) or (d,): a UViT preset, or the MLP for vectors."""
    options = dict(config.model_options)
    try:
        if config.model == "mlp":
            if len(shape) != 1:
                raise ConfigError(f"model: 'mlp' needs vector data, got data of shape {tuple(shape)}")
            return MLPNet(dim=shape[0], classes=num_classes, **options)
        if len(shape) != 3:
            raise ConfigError(f"model: a UViT needs [C, H, W] images, got data of shape {tuple(shape)}; use model=mlp")
        return uvit(config.model, in_channels=shape[0], num_classes=num_classes, **options)
    except (TypeError, KeyError) as error:
        raise ConfigError(f"model_options: {error}") from None


def wrap(net: torch.nn.Module, config: TrainConfig, schedule: CosineSchedule) -> torch.nn.Module:
    """The model a run's kind trains and samples around its network (train.kinds)."""
    return KINDS[config.kind].wrap(net, config, schedule)


def generate(model, config: TrainConfig, n_steps: int, noise: torch.Tensor, teacher_sampler: str = "addim",
             generator: torch.Generator | None = None, **cond) -> torch.Tensor:
    """Samples from noise with n_steps model calls, the way the model's kind samples (train.kinds)."""
    return KINDS[config.kind].sample(model, config, n_steps, noise, teacher_sampler, generator, **cond)


def default_steps(config: TrainConfig) -> int:
    """The step count of grids and evaluation when config.sample_steps is None."""
    return KINDS[config.kind].default_steps(config)


def load_model(path: str | Path, device: torch.device | str = "cpu", ema: bool = True):
    """(model, config, info) from a run or checkpoint directory: the EMA weights (or the online ones), in
    eval mode; info holds the data's shape and classes."""
    checkpoint = load_checkpoint(path, device=str(device))
    config, info, net = _rebuild(checkpoint)
    entry = "ema" if ema and "ema" in checkpoint else "model"
    check_state_dict(f"{checkpoint['path'] / entry}.safetensors", checkpoint[entry], net)
    net.load_state_dict(checkpoint[entry])
    model = wrap(net.to(device).requires_grad_(False), config, make_schedule(config)).eval()
    return model, config, info


def _rebuild(checkpoint: dict) -> tuple[TrainConfig, dict, torch.nn.Module]:
    """(config, data info, a new network) of a loaded training checkpoint; errors name its checkpoint.json."""
    file = checkpoint["path"] / MANIFEST
    config, info = checkpoint.get("config"), checkpoint.get("data_info")
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected 'config' a mapping (a checkpoint of mcm-fast train), got {config!r:.60}")
    shape = info.get("shape") if isinstance(info, dict) else None
    classes = info.get("num_classes") if isinstance(info, dict) else None
    if not (isinstance(shape, list) and 1 <= len(shape) <= 3 and all(type(n) is int and n >= 1 for n in shape)
            and type(classes) is int and classes >= 0):
        raise ValueError(f"{file}: expected 'data_info' {{'shape': [C, H, W] or [d], 'num_classes': int >= 0}}, "
                         f"got {info!r:.80}")
    try:
        config = load_config(config)
        return config, info, make_net(config, tuple(shape), classes)
    except ConfigError as error:
        raise ValueError(f"{file}: its config is invalid: {error}") from None
