"""LoRA students that share their teacher's weights (issue 34), and their export for a stock diffusers pipeline.

The student is the teacher's diffusers network with peft LoRA adapters (LCM-LoRA's and PCM's form: the attention
projections of a UNet2DConditionModel); the teacher is the same network with the adapters off for its call, so
distillation holds one copy of the base weights and trains the adapters only. export_lora writes the adapters
as diffusers' save_lora_weights does (pytorch_lora_weights.safetensors, with the LoRA config as its metadata)
and the MCMScheduler config beside them, so that

    pipe.load_lora_weights(DIR); pipe.scheduler = MCMScheduler.from_pretrained(DIR)
    pipe(prompt, num_inference_steps=4)

samples the student with 4 UNet calls. Needs the optional extras diffusers and peft.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mcm_fast._checks import check_int, check_real
from mcm_fast.models.diffusers_nets import DiffusersNet, import_diffusers

ADAPTER = "mcm"  # the adapter's name inside the network
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as diffusers' LoRA scripts train
LCM_TARGETS = (*TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "conv_shortcut",
               "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")  # LCM-LoRA's: convolutions too
JOINT_TARGETS = (*TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "ff.net.2",
                 "ff_context.net.0.proj", "ff_context.net.2")  # an SD3 transformer's both streams


def import_peft():
    """The peft module, or an ImportError that says how to install it."""
    try:
        import peft
    except ImportError:
        raise ImportError("peft: not installed; pip install peft==0.21.2 (the optional extra, beside the pinned "
                          "torch)") from None
    return peft


def add_lora(net: DiffusersNet, rank: int, alpha: float | None = None, targets=TARGETS) -> DiffusersNet:
    """net with LoRA adapters of this rank (scale alpha / rank; alpha defaults to rank) on its target modules,
    the base weights frozen: its trainable parameters are the adapters' only. B starts at zero (peft's default),
    so the student starts as its teacher."""
    if not isinstance(net, DiffusersNet):
        raise TypeError(f"net: expected a DiffusersNet (a diffusers network as the package calls it), got "
                        f"{type(net).__name__}")
    check_int("rank", rank, 1)
    alpha = float(rank) if alpha is None else check_real("alpha", alpha, 0.0, float("inf"))
    config = import_peft().LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                      init_lora_weights=True)
    net.requires_grad_(False)
    try:
        net.net.add_adapter(config, adapter_name=ADAPTER)
    except ValueError as error:  # peft: none of the target modules is in the network
        raise ValueError(f"targets: {error}") from None
    return net


def lora_parameters(net: DiffusersNet) -> dict[str, torch.nn.Parameter]:
    """The adapters' parameters by name: what a LoRA student trains."""
    return {name: p for name, p in net.named_parameters() if f".{ADAPTER}." in name or name.endswith(f".{ADAPTER}")}


class AdaptersOff(nn.Module):
    """The teacher of a LoRA student: the student's own network called with its adapters disabled, so that both
    hold one copy of the base weights (it registers no parameters of its own)."""

    def __init__(self, student: DiffusersNet):
        super().__init__()
        object.__setattr__(self, "student", student)  # not a submodule: its parameters stay the student's

    def forward(self, z, time, **cond):
        unet = self.student.net
        unet.disable_adapters()
        try:
            return self.student(z, time, **cond)
        finally:
            unet.enable_adapters()


def export_lora(net: DiffusersNet, out: str | Path, scheduler_config: dict, boundaries: str = "t") -> Path:
    """Writes net's adapters as diffusers' save_lora_weights does (safetensors, the LoRA config as metadata) and
    an MCMScheduler on scheduler_config's betas and prediction type (a pipeline's scheduler.config) beside them;
    returns out."""
    from peft.utils import get_peft_model_state_dict

    from mcm_fast.integrations.diffusers import MCMScheduler

    diffusers = import_diffusers()
    unet = net.net
    if ADAPTER not in getattr(unet, "peft_config", {}):
        raise ValueError("net: has no LoRA adapters (add_lora); expected a LoRA student")
    layers = get_peft_model_state_dict(unet, adapter_name=ADAPTER)  # peft's names (lora_A, lora_B) for every layer:
    # diffusers' older names cover attention only, and a file that mixes the two loads without its attention
    out, metadata = Path(out), unet.peft_config[ADAPTER].to_dict()
    if isinstance(unet, diffusers.SD3Transformer2DModel):  # StableDiffusion3Pipeline.load_lora_weights reads it
        diffusers.StableDiffusion3Pipeline.save_lora_weights(
            out, transformer_lora_layers=layers, safe_serialization=True, transformer_lora_adapter_metadata=metadata)
    else:  # SDXL's UNet (added text_embeds and time_ids) loads through its own pipeline class
        sdxl = unet.config.get("addition_embed_type") == "text_time"
        pipeline = diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
        pipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True,
                                   unet_lora_adapter_metadata=metadata)
    MCMScheduler.from_settings(scheduler_config, boundaries).save_pretrained(out)
    return out
