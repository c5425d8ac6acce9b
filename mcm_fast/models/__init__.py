"""Networks: the UViT for images (simple diffusion, the MCM paper's presets) and the MLP for low-dimensional toy
data."""
from mcm_fast.models.dropout import Dropout, MaskTape
from mcm_fast.models.mlp import MLPNet
from mcm_fast.models.uvit import UVIT_PRESETS, UViT, UViTConfig, count_parameters, uvit

__all__ = ["UVIT_PRESETS", "Dropout", "MLPNet", "MaskTape", "UViT", "UViTConfig", "count_parameters", "uvit"]
