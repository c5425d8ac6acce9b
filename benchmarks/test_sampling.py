"""Few-step sampling, mf.sample(model, n_steps=4): the eager loop against the compiled network
(compile=True), the loop captured in one CUDA graph (compile=True, cuda_graph=True) and n_steps times the
compiled network's forward alone, in images/s and as a fraction of the matmul rate measured in the same run
(FLOPs counted from the model). bf16 autocast on GPU, float32 on CPU.

Sizes (resolution x batch) from MCM_FAST_BENCH_SAMPLING; by default 64 px at batch 1 to 256 and 32 and 128 px at
batch 64 on GPU (a UViT with 6 transformer blocks of width 512 in the middle,
                 25M parameters), the tiny UViT at 16 px on CPU.
Run: pytest benchmarks/test_sampling.py
"""
import contextlib
import os

import pytest
import torch

import mcm_fast as mf
from benchmarks.conftest import DEVICE, forward_flops
from mcm_fast.models import uvit

CUDA = DEVICE.type == "cuda"
N_STEPS = 4
DEFAULT = "64x1,64x16,64x64,64x256,32x64,128x64" if CUDA else "16x1,16x16,16x64"
SIZES = [tuple(int(v) for v in size.split("x"))
         for size in os.environ.get("MCM_FAST_BENCH_SAMPLING", DEFAULT).split(",")]
IMPLS = ["eager", "compiled", "graph", "forward x S"] if CUDA else ["eager", "compiled", "forward x S"]


def bench_network(channels: int = 3) -> torch.nn.Module:
    """The benchmark's UViT: the mnist preset widened in the middle on GPU (6 transformer blocks of width 512); the
    tiny preset on CPU."""
    torch.manual_seed(0)
    if CUDA:
        return uvit("mnist", in_channels=channels, num_classes=10, middle_channels=512, middle_blocks=6,
                    emb_channels=512, head_dim=64)
    return uvit("tiny", in_channels=1, num_classes=10)


def autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else contextlib.nullcontext()


@pytest.fixture(scope="module")
def model():
    net = bench_network().to(DEVICE).eval().requires_grad_(False)
    with torch.no_grad():  # weights that are not zero (the last conv starts at zero)
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return mf.Denoiser(net, mf.CosineSchedule())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("resolution,batch", SIZES, ids=[f"{r}px-B{b}" for r, b in SIZES])
def test_sampling(measure, model, resolution, batch, impl):
    shape = (batch, model.net.config.in_channels, resolution, resolution)
    noise = torch.randn(shape, device=DEVICE)
    label = torch.arange(batch, device=DEVICE) % 10
    if impl == "forward x S":
        network = torch.compile(model)
        t = torch.full((batch,), 0.5, dtype=torch.float64, device=DEVICE)

        def run():
            with autocast(), torch.no_grad():
                for _ in range(N_STEPS):
                    network(noise, t, label=label)
    else:
        options = {"compile": impl != "eager", "cuda_graph": impl == "graph"}

        def run():
            with autocast():
                mf.sample(model, N_STEPS, noise=noise, label=label, **options)

    flops = N_STEPS * forward_flops(model.net, shape, 10)
    measure(run, group=f"sample-S{N_STEPS}-{resolution}px-B{batch}", impl=impl, flops=flops, items=batch)
