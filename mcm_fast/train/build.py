"""From a TrainConfig to modules: the schedule, the run's kind bound to its config (train.kinds: the model around
the network, the loss, the sampler) and the raw network; `load_model` rebuilds them from a checkpoint."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mcm_fast.integrations.pipelines import is_pipeline_folder, load_pipeline_network, network_digest, pipeline_settings
from mcm_fast.models import UVIT_PRESETS, MLPNet, UViT, uvit
from mcm_fast.models.diffusers_nets import DIFFUSERS_MODELS, TEXT_MODELS, DiffusersNet
from mcm_fast.schedules import CosineSchedule, EDMSchedule, FlowSchedule, Schedule
from mcm_fast.train.checkpoint import MANIFEST, check_state_dict, load_checkpoint
from mcm_fast.train.config import ConfigError, TrainConfig, load_config
from mcm_fast.train.kinds import KINDS, Kind


def make_schedule(config: TrainConfig) -> Schedule:
    """config.schedule with config.schedule_options: the cosine logSNR schedule (shifted when config.schedule_shift
    = (r, res), math.md §1), rectified flow, EDM's sigma, or DDPM's discrete betas (diffusers' settings)."""
    options = dict(config.schedule_options)
    try:
        if config.schedule == "discrete":
            from mcm_fast.integrations.diffusers import schedule_from_betas

            return schedule_from_betas(**options)
        if config.schedule == "cosine":
            return CosineSchedule(shift=tuple(config.schedule_shift) if config.schedule_shift else None, **options)
        return {"flow": FlowSchedule, "edm": EDMSchedule}[config.schedule](**options)
    except ImportError as error:
        raise ConfigError(f"schedule: {config.schedule!r} needs {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"schedule_options: {error}") from None


def make_kind(config: TrainConfig, num_classes: int, schedule: Schedule | None = None,
              null_cond: dict | None = None) -> Kind:
    """The run's kind bound to its config, its schedule (built from the config unless given), its classes and the
    null condition of data other than classes (None: the null class): KINDS[config.kind](config, schedule,
    num_classes, null_cond), which checks the settings it uses."""
    return KINDS[config.kind](config, make_schedule(config) if schedule is None else schedule, num_classes, null_cond)


def data_null_cond(config: TrainConfig) -> dict | None:
    """The null condition of a run's data beyond classes: a latent cache's empty prompt embedding (read alone and
    verified), else None (the null class, or unconditional data)."""
    if config.data.name != "latents":
        return None
    from mcm_fast.data.latents import load_null_cond

    return load_null_cond(config.data.path)


def make_net(kind: Kind, shape: tuple, num_classes: int, text: list | None = None,
             pooled: int | None = None) -> torch.nn.Module:
    """The raw network of a run (kind.config) for data of shape (C, H, W) or (d,) (text: [L, D] of its prompt
    embeddings, pooled: the width of pooled ones): a UViT preset, the MLP for vectors, or a diffusers network; a
    student of several step counts or with guidance distilled into it embeds those inputs too."""
    config = kind.config
    options = {**config.model_options, **kind.network_options()}
    if config.gradient_checkpointing and config.model not in DIFFUSERS_MODELS:
        raise ConfigError(f"gradient_checkpointing: recomputes a diffusers network's blocks; expected false for "
                          f"model {config.model!r}")
    try:
        if config.model in DIFFUSERS_MODELS:
            if "student_steps" in options:
                raise ConfigError(f"objective.student_steps: a student of several step counts embeds S, which the "
                                  f"UViT and the MLP do; expected one of them, got model {config.model!r}")
            if "guidance_distilled" in options and config.model != "diffusers-unet2d-cond":
                raise ConfigError(f"objective.guidance: distilled guidance embeds w, which the UViT, the MLP and a "
                                  f"text-conditioned UNet (LCM's w embedding) do; got model {config.model!r}")
            if "guidance_distilled" in options and config.lora_rank is not None:
                raise ConfigError("objective.guidance: a LoRA file cannot carry the w embedding that distilled "
                                  "guidance adds; expected a full student (no lora_rank) to distill guidance")
            if len(shape) != 3:
                raise ConfigError(f"model: {config.model!r} needs [C, H, W] images, got data of shape {tuple(shape)}")
            if (config.model in TEXT_MODELS) != (text is not None):
                raise ConfigError(f"model: {config.model!r} for data {'with' if text else 'without'} prompts; "
                                  f"expected {' or '.join(TEXT_MODELS) if text else 'another model'} (data with "
                                  f"prompts is data.name latents)")
            takes_pooled = config.model == "diffusers-sd3" or options.get("addition_embed_type") == "text_time"
            if takes_pooled != (pooled is not None):
                raise ConfigError(f"model: {config.model!r} {'takes' if takes_pooled else 'takes no'} pooled prompt "
                                  f"embeddings and the data {'has none' if takes_pooled else 'has them'}; expected the "
                                  f"network of the pipeline that encoded the cache (SDXL's and SD3's take them)")
            net = DiffusersNet.build(config.model, options, shape, num_classes, text, pooled)
            if config.gradient_checkpointing:
                net.net.enable_gradient_checkpointing()
            return net
        if config.model == "mlp":
            if len(shape) != 1:
                raise ConfigError(f"model: 'mlp' needs vector data, got data of shape {tuple(shape)}")
            return MLPNet(dim=shape[0], classes=num_classes, **options)
        if text is not None:
            raise ConfigError(f"model: {config.model!r} takes no prompts; expected {' or '.join(TEXT_MODELS)} for data "
                              f"with prompt embeddings")
        if len(shape) != 3:
            raise ConfigError(f"model: a UViT needs [C, H, W] images, got data of shape {tuple(shape)}; use model=mlp")
        return uvit(config.model, in_channels=shape[0], num_classes=num_classes, **options)
    except ConfigError:
        raise
    except ImportError as error:
        raise ConfigError(f"model: {config.model!r} needs {error}") from None
    except (TypeError, KeyError, ValueError) as error:
        raise ConfigError(f"model_options: {str(error).splitlines()[0]}") from None


def with_lora(net: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """net with the LoRA adapters of config.lora_rank (its base weights frozen), or net itself without them."""
    if config.lora_rank is None:
        return net
    if not isinstance(net, DiffusersNet):
        raise ConfigError(f"lora_rank: a LoRA student adapts a diffusers network; expected model diffusers-* (or a "
                          f"pipeline folder as teacher), got model {config.model!r}")
    from mcm_fast.integrations.lora import TARGETS, add_lora

    try:
        return add_lora(net, config.lora_rank, config.lora_alpha, config.lora_targets or TARGETS)
    except ValueError as error:  # none of the targets is in the network
        raise ConfigError(f"lora_{error}") from None


def adapter_keys(net: torch.nn.Module) -> set[str]:
    """The state-dict keys of a LoRA network's adapters: all that a LoRA run's checkpoints hold of it (its frozen
    base is its teacher folder's network, recorded by lora_base)."""
    from mcm_fast.integrations.lora import lora_parameters

    return set(lora_parameters(net))


def lora_base(config: TrainConfig) -> dict:
    """What a LoRA run's checkpoints record of their frozen base: the teacher folder and its network's sha256."""
    return {"teacher": str(config.teacher), "weights_sha256": network_digest(config.teacher)}


def load_base(net: torch.nn.Module, config: TrainConfig, recorded: dict, where: str) -> None:
    """Loads a LoRA run's frozen base, its teacher folder's network, into net (before its adapters are added),
    refusing a teacher whose weights are not those the run was trained on."""
    if lora_base(config)["weights_sha256"] != recorded.get("weights_sha256"):
        raise ValueError(f"{where}: the LoRA run's base, the network of {config.teacher}, is not the one it was "
                         f"trained on (its sha256 differs from the checkpoint's lora_base); expected that teacher")
    net.load_state_dict(load_pipeline_network(config.teacher).state_dict())


STUDENT_INPUTS = ("student_inputs.", "net.time_embedding.cond_proj.")  # a UViT's or MLP's; a UNet's w embedding


def deeper_middle(teacher: TrainConfig, student: TrainConfig) -> bool:
    """Whether the student's network is its teacher's UViT with more middle blocks (model_options.middle_blocks),
    the one way a student may differ from its teacher's network: load_teacher_weights starts it as the teacher."""
    if student.model != teacher.model or student.model not in UVIT_PRESETS:
        return False

    def split(config):  # (middle blocks, the other options)
        options = dict(config.model_options)
        return options.pop("middle_blocks", UVIT_PRESETS[config.model].middle_blocks), options

    (mine, rest), (theirs, base) = split(student), split(teacher)
    return rest == base and mine > theirs


def load_teacher_weights(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Starts a student from its teacher's weights; only the student's own inputs (the S and w embeddings, which
    start at zero) and the middle blocks of a UViT student deeper than its teacher (which start as the identity:
    the student starts as its teacher) are not in the teacher."""
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    added = ()
    if isinstance(student, UViT) and isinstance(teacher, UViT) and len(student.middle) > len(teacher.middle):
        grown = range(len(teacher.middle), len(student.middle))
        student.make_identity(grown)
        added = tuple(f"middle.{i}." for i in grown)
    own = [key for key in missing if not key.startswith(STUDENT_INPUTS + added)]
    if own or unexpected:
        raise ConfigError(f"init: the teacher's network does not match the student's (missing {own[:3]}, "
                          f"unexpected {unexpected[:3]})")


def adopt_teacher(config: TrainConfig) -> TrainConfig:
    """config, with the network, schedule, prediction and time input of its teacher when that is a diffusers
    pipeline folder: a student starts from its teacher's network, through the same wrapper."""
    if config.teacher is None or not is_pipeline_folder(config.teacher):
        return config
    return dataclasses.replace(config, **pipeline_settings(config.teacher)[0])


def load_model(path: str | Path, device: torch.device | str = "cpu", ema: bool = True):
    """(model, kind, info) from a run or checkpoint directory, or a diffusers pipeline folder (a teacher): the
    EMA weights (or the online ones) in eval mode, the run's kind bound to its config (kind.config), and the data's
    shape and classes."""
    if is_pipeline_folder(path):
        settings, info = pipeline_settings(path)
        kind = make_kind(load_config({"kind": "teacher", **settings}), info["num_classes"])
        net = load_pipeline_network(path).to(device).requires_grad_(False)
        return kind.wrap(net).eval(), kind, info
    checkpoint = load_checkpoint(path, device=str(device))
    kind, info, net = _rebuild(checkpoint)
    entry = "ema" if ema and "ema" in checkpoint else "model"
    only = adapter_keys(net) if "lora_base" in checkpoint else None  # the base came from the teacher folder
    check_state_dict(f"{checkpoint['path'] / entry}.safetensors", checkpoint[entry], net, only)
    net.load_state_dict(checkpoint[entry], strict=only is None)
    return kind.wrap(net.to(device).requires_grad_(False)).eval(), kind, info


def _rebuild(checkpoint: dict) -> tuple[Kind, dict, torch.nn.Module]:
    """(kind, data info, a new network) of a loaded training checkpoint; errors name its checkpoint.json."""
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
        kind = make_kind(config, classes, null_cond=data_null_cond(config))
        net = make_net(kind, tuple(shape), classes, info.get("text"), info.get("pooled"))
        if "lora_base" in checkpoint:
            load_base(net, config, checkpoint["lora_base"], str(file))
        return kind, info, with_lora(net, config)
    except ConfigError as error:
        raise ValueError(f"{file}: its config is invalid: {error}") from None
