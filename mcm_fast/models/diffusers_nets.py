"""diffusers networks (UNet2DModel, DiTTransformer2DModel) as raw networks net(z, time, label=None) -> out.

diffusers is an optional extra (pip install -e ".[diffusers]"): it is imported when such a network is built.
"""
from __future__ import annotations

import torch
from torch import nn

DIFFUSERS_MODELS = {"diffusers-unet2d": "UNet2DModel", "diffusers-unet2d-cond": "UNet2DConditionModel",
                    "diffusers-dit": "DiTTransformer2DModel"}
PRIVATE_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def import_diffusers():
    """The diffusers module, or an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ImportError("diffusers: not installed; pip install -e \".[diffusers]\" (the optional extra)") from None
    return diffusers


class DiffusersNet(nn.Module):
    """A diffusers denoising network seen as net(z, time, label=None, encoder_hidden_states=None) -> out: time goes
    in as its timestep, label as its class_labels (num_classes is the null class of classifier-free guidance) and
    a text-conditioned network's prompt embeddings as its encoder_hidden_states."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net: expected a diffusers model such as UNet2DModel, got {type(net).__name__}")
        self.net = net

    @classmethod
    def build(cls, model: str, options: dict, shape: tuple, num_classes: int,
              text: list | None = None) -> DiffusersNet:
        """A randomly initialized DIFFUSERS_MODELS[model] for [C, H, W] data (text: the [L, D] of its prompt
        embeddings, for the text-conditioned UNet); options are its constructor's arguments and override the sizes
        taken from the data."""
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
        else:
            if not num_classes:
                raise ValueError("model: 'diffusers-dit' is class-conditional (adaLN-Zero on labels): expected "
                                 "labelled data")
            sizes = {"sample_size": size, "in_channels": channels, "out_channels": channels,
                     "num_embeds_ada_norm": classes}
        options = {k: v for k, v in options.items() if k not in PRIVATE_KEYS}
        return cls(net_class(**{**sizes, **options}))

    def forward(self, z: torch.Tensor, time: torch.Tensor, label: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is None:
            return self.net(z, timestep=time, class_labels=label).sample
        return self.net(z, timestep=time, encoder_hidden_states=encoder_hidden_states, class_labels=label).sample
