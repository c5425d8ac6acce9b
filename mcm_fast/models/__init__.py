"""Networks: the MLP for low-dimensional toy data (the UViT for images joins here)."""
from mcm_fast.models.mlp import MLPNet

__all__ = ["MLPNet"]
