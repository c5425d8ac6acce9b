"""ddim_step and addim_step: every backend present against eager and torch.compile of the reference.

Bytes moved per call: benchmarks/workloads.py (3 tensors). Copy bandwidth: read + write of one tensor.
Run: pytest benchmarks/test_ddim.py (MCM_FAST_BENCH_MIB=1,16,64 sets the tensor sizes).
"""
import pytest
import torch

import mcm_fast as mf
from benchmarks.conftest import DEVICE, SIZES_MIB
from benchmarks.workloads import BATCH, ELEMENTWISE_DTYPES, elementwise_bytes, elementwise_numel
from mcm_fast.ops.registry import runs_on
from mcm_fast.solvers import addim_step_reference, ddim_step_reference

DTYPES = [getattr(torch, name) for name in ELEMENTWISE_DTYPES]
FUSED = [b for b in mf.available_backends("ddim_step") if b != "reference" and runs_on(b, DEVICE)]
IMPLS = ["eager", "compiled"] + FUSED
REFERENCES = {"ddim_step": ddim_step_reference, "addim_step": addim_step_reference}


def inputs(size_mib, dtype, op):
    numel = elementwise_numel(size_mib, dtype.itemsize)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(BATCH, numel // BATCH, device=DEVICE, dtype=dtype, generator=g)
    z = torch.randn_like(x)
    logsnr_t = torch.linspace(-10, 5, BATCH, device=DEVICE, dtype=torch.float64)
    args = [x, z, logsnr_t, logsnr_t + 1.0]
    if op == "addim_step":
        args.append(torch.full((BATCH,), 0.05, device=DEVICE, dtype=torch.float64))
    return args


@pytest.mark.parametrize("size_mib", SIZES_MIB)
def test_copy(measure, size_mib):
    x = torch.empty(size_mib * 2**20 // 4, device=DEVICE)
    y = torch.empty_like(x)
    measure(lambda: y.copy_(x), group=f"copy-{size_mib}MiB", impl="copy", nbytes=2 * x.nbytes, size_mib=size_mib)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("size_mib", SIZES_MIB)
@pytest.mark.parametrize("op", ["ddim_step", "addim_step"])
def test_update(measure, op, size_mib, dtype, impl):
    args = inputs(size_mib, dtype, op)
    if impl == "eager":
        fn = REFERENCES[op]
    elif impl == "compiled":
        fn = torch.compile(REFERENCES[op], dynamic=False)
    else:
        fn = mf.ops.dispatch(op, DEVICE, needs_grad=False, backend=impl)
    nbytes = elementwise_bytes(op, size_mib, dtype.itemsize)
    group = f"{op}-{size_mib}MiB-{str(dtype).split('.')[-1]}"
    measure(lambda: fn(*args), group=group, impl=impl, nbytes=nbytes, size_mib=size_mib)
