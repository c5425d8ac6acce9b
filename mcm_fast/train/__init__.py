"""Training: configs, the loop for every kind, EMA, checkpoints and distributed setup (torchrun)."""
from mcm_fast.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]
