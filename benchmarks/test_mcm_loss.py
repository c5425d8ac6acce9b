"""mcm_target and mcm_target_loss (forward, and forward + backward): every backend present against eager and
torch.compile of the reference, in the same run.

Bytes counted are the least each call must move (benchmarks/workloads.py): 4 tensors for mcm_target and
mcm_target_loss, 5 with its backward. Run: pytest benchmarks/test_mcm_loss.py (MCM_FAST_BENCH_MIB=1,16,64
sets the sizes).
"""
import pytest
import torch

import mcm_fast as mf
from benchmarks.conftest import DEVICE, SIZES_MIB
from benchmarks.workloads import BATCH, ELEMENTWISE_DTYPES, elementwise_bytes, elementwise_numel
from mcm_fast.losses import mcm_target_reference, robust_loss, target_squared_distance_reference
from mcm_fast.ops.registry import runs_on

DTYPES = [getattr(torch, name) for name in ELEMENTWISE_DTYPES]
FUSED = [b for b in mf.available_backends("mcm_target_sqdist") if b != "reference" and runs_on(b, DEVICE)]
IMPLS = ["eager", "compiled"] + FUSED


def inputs(size_mib, dtype):
    """x_hat, x_ref, z_s, z_t of size_mib each, and per-sample logSNRs of t, s, t_step and the weight."""
    numel = elementwise_numel(size_mib, dtype.itemsize)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    tensors = [torch.randn(BATCH, numel // BATCH, device=DEVICE, dtype=dtype, generator=g) for _ in range(4)]
    logsnr_t = torch.linspace(-8, 4, BATCH, device=DEVICE, dtype=torch.float64)
    logsnrs = [logsnr_t, logsnr_t + 0.5, logsnr_t + 1.0]
    return tensors, logsnrs, torch.exp(logsnr_t) + 1


def reference_loss(x_hat, x_ref, z_s, z_t, logsnrs, weight):
    return (weight * robust_loss(target_squared_distance_reference(x_hat, x_ref, z_s, z_t, *logsnrs), "pseudo_huber",
                                 1e-4)).mean()


def fused_loss(backend):
    impl = mf.ops.dispatch("mcm_target_sqdist", DEVICE, needs_grad=True, backend=backend)

    def loss(x_hat, x_ref, z_s, z_t, logsnrs, weight):
        return (weight * robust_loss(impl(x_hat, x_ref, z_s, z_t, *logsnrs), "pseudo_huber", 1e-4)).mean()

    return loss


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("size_mib", SIZES_MIB)
def test_target(measure, size_mib, dtype, impl):
    (_, x_ref, z_s, z_t), logsnrs, _ = inputs(size_mib, dtype)
    if impl == "eager":
        fn = mcm_target_reference
    elif impl == "compiled":
        fn = torch.compile(mcm_target_reference, dynamic=False)
    else:
        fn = mf.ops.dispatch("mcm_target", DEVICE, needs_grad=False, backend=impl)
    measure(lambda: fn(x_ref, z_s, z_t, *logsnrs), group=f"mcm_target-{size_mib}MiB-{str(dtype).split('.')[-1]}",
            impl=impl, nbytes=elementwise_bytes("mcm_target", size_mib, dtype.itemsize), size_mib=size_mib)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("size_mib", SIZES_MIB)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_target_loss(measure, backward, size_mib, dtype, impl):
    (x_hat, x_ref, z_s, z_t), logsnrs, weight = inputs(size_mib, dtype)
    loss = {"eager": reference_loss, "compiled": torch.compile(reference_loss, dynamic=False)}.get(impl)
    loss = loss or fused_loss(impl)
    x_hat.requires_grad_(backward)

    def run():
        value = loss(x_hat, x_ref, z_s, z_t, logsnrs, weight)
        if backward:
            value.backward()
            x_hat.grad = None

    op = f"mcm_target_loss-{'fwd+bwd' if backward else 'fwd'}"
    group = f"{op}-{size_mib}MiB-{str(dtype).split('.')[-1]}"
    measure(run, group=group, impl=impl, nbytes=elementwise_bytes(op, size_mib, dtype.itemsize), size_mib=size_mib)
