"""Shared by the kernel parity tests: which device each backend runs on here, fresh inputs, and the
tolerance rule of style.md (a kernel's error at most 2x the reference's own error in that dtype)."""
import os
import zlib

import pytest
import torch

import mcm_fast as mf

DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}
VIEWS = {  # non-contiguous [B, ...] views of fresh data drawn by new(shape)
    "transposed": lambda B, new: new((B, 17, 3)).transpose(1, 2),
    "strided": lambda B, new: new((B, 34))[:, ::2],
    "batch-minor": lambda B, new: new((17, B)).t(),
    "expanded": lambda B, new: new((B, 1, 5)).expand(B, 4, 5),
}


def backend_device(backend: str) -> torch.device | None:
    """The device a backend's tests run on here, or None: Triton runs on CUDA, else on CPU under its interpreter."""
    if backend == "cuda" or (backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1"):
        return torch.device("cuda") if torch.cuda.is_available() else None
    return torch.device("cpu")


def kernel_params(op: str, reference: bool = False) -> list:
    """pytest params (backend, device) for every fused backend of op (and the reference with reference=True),
    skipped where its device is absent."""
    params = []
    for backend in mf.available_backends(op):
        if backend == "reference" and not reference:
            continue
        device = backend_device(backend)
        marks = [] if device is not None else [pytest.mark.skip(reason=f"{backend} needs a CUDA device")]
        params.append(pytest.param((backend, device), id=backend, marks=marks))
    return params


def generator(request) -> torch.Generator:
    """A generator seeded by the test id: every test draws its own, reproducible inputs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.name.encode()))


def shape_id(shape):
    return f"B{shape[0]}-d{torch.Size(shape[1:]).numel()}"


def randn(shape, dtype, g, device):
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)


def max_abs(x):
    return x.abs().max().item() if x.numel() else 0.0


def assert_parity(name, out, ref, truth, *inputs):
    """out passes if its max error vs truth (float64) is at most 2x the reference's own error in out's dtype,
    plus a floor of a few ulps of the compute dtype (float64 or float32) times the magnitude of the values
    involved: for float64 the reference is the truth (error 0), yet the kernel's formula rounds differently."""
    assert out.shape == truth.shape and out.dtype == ref.dtype, f"{name}: got {out.shape} {out.dtype}"
    err, ref_err = max_abs(out.double() - truth), max_abs(ref.double() - truth)
    compute = torch.float64 if out.dtype == torch.float64 else torch.float32
    floor = 4 * torch.finfo(compute).eps * max(max_abs(v) for v in (truth, *inputs))
    assert err <= 2 * ref_err + floor, f"{name}: max error {err:.3g} > 2 x reference error {ref_err:.3g} + {floor:.3g}"
