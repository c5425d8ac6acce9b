"""Multi-process training under torchrun: the process group, each rank's device, DDP or FSDP wrapping and
the full (unsharded) state dicts that rank 0 writes to checkpoints.

Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op, so one script serves both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place: rank, world size and device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Ranks:
    """Joins the torchrun process group (nccl on GPU, gloo on CPU) and picks this rank's device.

    device "auto" is cuda:LOCAL_RANK when CUDA is present, else the CPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for, but torch sees no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Ranks(rank, world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallel(net: nn.Module, strategy: str, ranks: Ranks) -> nn.Module:
    """net wrapped for data parallelism: DDP, or FSDP2 (fully_shard on each module listed in a ModuleList,
    i.e. every block, then the root) for networks too large to replicate."""
    if ranks.world == 1:
        return net
    if strategy == "ddp":
        device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=device_ids, broadcast_buffers=False)
    from torch.distributed.fsdp import fully_shard

    for module in list(net.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                if not isinstance(block, (nn.ModuleList, nn.ModuleDict)):  # containers have no forward
                    fully_shard(block)
    fully_shard(net)
    return net


def full_state_dict(net: nn.Module, ranks: Ranks) -> dict:
    """The unsharded state dict on the CPU (a collective under FSDP: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    if ranks.world == 1:
        return {k: v.detach().cpu() for k, v in unwrap(net).state_dict().items()}
    return get_model_state_dict(unwrap(net), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer, ranks: Ranks) -> dict:
    """The optimizer's unsharded state dict (a collective under FSDP)."""
    if ranks.world == 1 or not _sharded(net):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(unwrap(net), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(net: nn.Module, state: dict, optimizer=None, optimizer_state: dict | None = None,
                    strict: bool = True) -> None:
    """Loads unsharded states into a (possibly sharded) network and its optimizer on every rank (strict=False: a
    part of the network's tensors, a LoRA run's adapters)."""
    if not _sharded(net):
        unwrap(net).load_state_dict(state, strict=strict)
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=strict)
    set_model_state_dict(net, state, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(net, optimizer, optimizer_state, options=options)


def unwrap(net: nn.Module) -> nn.Module:
    """The module under DDP's and torch.compile's wrappers."""
    while isinstance(net, nn.parallel.DistributedDataParallel) or hasattr(net, "_orig_mod"):
        net = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net._orig_mod
    return net


def _sharded(net: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in unwrap(net).parameters())


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself on one process)."""
    if ranks.world == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / ranks.world
