"""The compiled backends this install has: the extension mcm_fast._C (csrc/: "cpu" and "cuda") and the Triton
kernels (kernels/: "triton", on CUDA, or on CPU tensors under TRITON_INTERPRET=1).

Without either the package still works on the reference backend; NATIVE_ERROR and TRITON_ERROR say why one
is missing. mcm_fast.ops.ddim and mcm_fast.ops.mcm_loss register the ops of both with torch.library.
"""
from __future__ import annotations

import torch

try:
    from mcm_fast import _C  # noqa: F401  (importing registers the ops torch.ops.mcm_fast.*_native)
except ImportError as error:
    NATIVE_ERROR: str | None = f"{type(error).__name__}: {error}"
else:
    NATIVE_ERROR = None

try:
    import triton  # noqa: F401
except ImportError as error:
    TRITON_ERROR: str | None = f"{type(error).__name__}: {error}"
else:
    TRITON_ERROR = None


def native_keys(op: str) -> list[tuple[str, str]]:
    """(backend, dispatch key) pairs the extension implements mcm_fast::{op}_native for: cpu/CPU, cuda/CUDA."""
    if NATIVE_ERROR is not None or not hasattr(torch.ops.mcm_fast, f"{op}_native"):
        return []
    return [(backend, key) for backend, key in (("cpu", "CPU"), ("cuda", "CUDA"))
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"mcm_fast::{op}_native", key)]
