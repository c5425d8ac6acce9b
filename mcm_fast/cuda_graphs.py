"""CUDA-graph capture of a whole sampling loop (network calls, steps, guidance), one graph per model and call
signature, cached while the model lives and replayed with the weights in place."""
from __future__ import annotations

import weakref

import torch


def graph_count(model) -> int:
    """How many graphs are cached for model (one per call signature)."""
    return len(_GRAPHS.get(model, {}))


def signature(value):
    """What a captured graph depends on in an input: a tensor's shape, dtype and device, or a plain value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, str(value.device))
    return ("value", repr(value))


class CapturedLoop:
    """One sampling loop(z, cond) captured in a CUDA graph over static input buffers (the noise and the tensor
    conditioning): a call copies its inputs in, replays the graph and returns a copy of the output."""

    def __init__(self, loop, z: torch.Tensor, cond: dict):
        self.z = z.clone()
        self.cond = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        side = torch.cuda.Stream(z.device)
        side.wait_stream(torch.cuda.current_stream(z.device))
        with torch.cuda.stream(side):  # warm-up off the capture: compilation, autotuning, lazy initialization
            for _ in range(2):
                loop(self.z, self.cond)
        torch.cuda.current_stream(z.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = loop(self.z, self.cond)

    def __call__(self, z: torch.Tensor, cond: dict) -> torch.Tensor:
        self.z.copy_(z)
        for key, value in cond.items():
            if isinstance(value, torch.Tensor):
                self.cond[key].copy_(value)
        self.graph.replay()
        return self.output.clone()


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {call signature: CapturedLoop}


def captured(model, key, loop, z, cond) -> torch.Tensor:
    """loop(z, cond) by the graph of (model, key), captured on first use and replayed with the weights in place
    (updates in place are seen; replaced parameter tensors are not); graphs go when the model does."""
    try:
        graphs = _GRAPHS.setdefault(model, {})
    except TypeError:
        raise TypeError(f"model: cuda_graph=True keeps graphs per model and needs one that can be weakly referenced "
                        f"(an nn.Module or a function), got {type(model).__name__}") from None
    if key not in graphs:
        graphs[key] = CapturedLoop(loop, z, cond)
    return graphs[key](z, cond)
