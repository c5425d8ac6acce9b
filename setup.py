"""Builds the extension mcm_fast._C: its C++ CPU part always, its CUDA part when possible.

The CUDA part is built when torch has CUDA and nvcc is found; MCM_FAST_BUILD_CUDA=0/1 overrides.
Build against the installed torch: `pip install -e . --no-build-isolation`.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "mcm_fast: building the extension needs torch installed first, e.g.\n"
        "  pip install torch==2.13.0 && pip install -e . --no-build-isolation"
    )


def build_cuda() -> bool:
    """Whether to compile csrc/cuda/*.cu: MCM_FAST_BUILD_CUDA wins, else torch CUDA + nvcc present."""
    flag = os.environ.get("MCM_FAST_BUILD_CUDA")
    if flag not in (None, "", "0", "1"):
        sys.exit(f"mcm_fast: MCM_FAST_BUILD_CUDA must be 0 or 1, got {flag!r}")
    if flag is not None and flag != "":
        return flag == "1"
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    cxx = ["-O3", "-fopenmp", "-march=native"]
    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if build_cuda() and cuda_sources:
        return cpp_extension.CUDAExtension(
            "mcm_fast._C",
            sources + cuda_sources,
            define_macros=[("MCM_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "mcm_fast._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"]
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
