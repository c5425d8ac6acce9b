"""diffusers networks (UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel, SD3Transformer2DModel) as raw
networks net(z, time, label=None, **text) -> out.

diffusers is an optional extra (pip install -e ".[diffusers]"): it is imported when such a network is built.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

W_EMBEDDING = 256  # the width of a guidance-distilled UNet's w embedding (LCM's time_cond_proj_dim)
DIFFUSERS_MODELS = {"diffusers-unet2d": "UNet2DModel", "diffusers-unet2d-cond": "UNet2DConditionModel",
                    "diffusers-dit": "DiTTransformer2DModel", "diffusers-sd3": "SD3Transformer2DModel"}
TEXT_MODELS = ("diffusers-unet2d-cond", "diffusers-sd3")  # the ones that take prompt embeddings
PRIVATE_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def import_diffusers():
    """The diffusers module, or an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ImportError("diffusers: not installed; pip install -e \".[diffusers]\" (the optional extra)") from None
    # torch caches the constructors a `with torch.device(...)` block redirects on their first use; transformers'
    # from_pretrained swaps torch.linspace for a CPU-bound copy while it runs, and a first use inside it would
    # cache that copy for the whole process (torch.linspace then ignores every device block). Use it first here.
    with torch.device("cpu"):
        torch.empty(0)
    return diffusers


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal embedding [B, dim] of 1000 w ([B]) that LCM's UNets add to their timestep embedding
    (timestep_cond) and diffusers' pipelines compute from guidance_scale - 1: sin and cos of 1000 w at dim / 2
    frequencies 10000^(-i / (dim / 2 - 1)), zero-padded to an odd dim."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device)
                            * -(math.log(10000.0) / (half - 1)))
    angles = (1000.0 * w.float())[:, None] * frequencies[None, :]
    return F.pad(torch.cat([angles.sin(), angles.cos()], dim=1), (0, dim % 2))


class DiffusersNet(nn.Module):
    """A diffusers denoising network seen as net(z, time, label=None, encoder_hidden_states=None,
    pooled_projections=None, time_ids=None, guidance=None) -> out: time goes in as its timestep, label as its
    class_labels (num_classes is the null class of classifier-free guidance), a text-conditioned network's prompt
    embeddings as its encoder_hidden_states (and pooled ones as an SD3 transformer's pooled_projections, or with
    the image size as an SDXL UNet's added text_embeds and time_ids), and a guidance-distilled UNet's w ([B]) as its
    timestep_cond (guidance_embedding; the UNet's time_cond_proj_dim)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net: expected a diffusers model such as UNet2DModel, got {type(net).__name__}")
        self.net = net

    @classmethod
    def build(cls, model: str, options: dict, shape: tuple, num_classes: int, text: list | None = None,
              pooled: int | None = None) -> DiffusersNet:
        """A randomly initialized DIFFUSERS_MODELS[model] for [C, H, W] data (text: the [L, D] of its prompt
        embeddings, pooled: the width of the pooled ones, for the text-conditioned networks); options are its
        constructor's arguments and override the sizes taken from the data."""
        if model not in DIFFUSERS_MODELS:
            raise ValueError(f"model: expected one of {tuple(DIFFUSERS_MODELS)}, got {model!r}")
        net_class = getattr(import_diffusers(), DIFFUSERS_MODELS[model])
        channels, size = shape[0], shape[1]
        classes = num_classes + 1 if num_classes else None
        if model == "diffusers-unet2d":
            sizes = {"sample_size": size, "in_channels": channels, "out_channels": channels,
                     "num_class_embeds": classes}
        elif model == "diffusers-unet2d-cond":
            sizes = {"sample_size": size, "in_channels": channels, "out_channels": channels,
                     **({"cross_attention_dim": text[1]} if text else {})}
            if options.pop("guidance_distilled", False):  # a w embedding that starts at zero: the teacher's UNet
                options = {**options, "time_cond_proj_dim": W_EMBEDDING}
        elif model == "diffusers-sd3":
            sizes = {"sample_size": size, "in_channels": channels, "out_channels": channels,
                     **({"joint_attention_dim": text[1]} if text else {}),
                     **({"pooled_projection_dim": pooled} if pooled else {})}
        else:
            if not num_classes:
                raise ValueError("model: 'diffusers-dit' is class-conditional (adaLN-Zero on labels): expected "
                                 "labelled data")
            sizes = {"sample_size": size, "in_channels": channels, "out_channels": channels,
                     "num_embeds_ada_norm": classes}
        options = {k: v for k, v in options.items() if k not in PRIVATE_KEYS}
        net = net_class(**{**sizes, **options})
        if getattr(getattr(net, "time_embedding", None), "cond_proj", None) is not None:
            nn.init.zeros_(net.time_embedding.cond_proj.weight)
        return cls(net)

    @property
    def guidance_distilled(self) -> bool:
        """Whether the network takes guidance= (a UNet with a w embedding, time_cond_proj_dim)."""
        return getattr(self.net.config, "time_cond_proj_dim", None) is not None

    def forward(self, z: torch.Tensor, time: torch.Tensor, label: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, pooled_projections: torch.Tensor | None = None,
                time_ids: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        if pooled_projections is not None and type(self.net).__name__ == "SD3Transformer2DModel":  # no labels, no w
            return self.net(z, encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled_projections,
                            timestep=time).sample
        extra = {}
        if pooled_projections is not None:  # SDXL's added conditions
            extra["added_cond_kwargs"] = {"text_embeds": pooled_projections, "time_ids": time_ids}
        if guidance is not None:
            if not self.guidance_distilled:
                raise ValueError("guidance: this network has no w embedding (time_cond_proj_dim); expected no "
                                 "guidance= input")
            extra["timestep_cond"] = guidance_embedding(guidance, self.net.config.time_cond_proj_dim).to(z.dtype)
        if encoder_hidden_states is not None:
            extra["encoder_hidden_states"] = encoder_hidden_states
        return self.net(z, timestep=time, class_labels=label, **extra).sample
