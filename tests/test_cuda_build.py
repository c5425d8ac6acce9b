"""The CUDA sources compile with nvcc wherever nvcc exists, even on a machine without a GPU.

A CPU build of torch ships the CUDA headers but not the generated c10/cuda/impl/cuda_cmake_macros.h, which
C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips; the real build (setup.py on a CUDA torch) does not need it.
"""
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

NVCC = shutil.which("nvcc")
SOURCES = sorted(str(p) for p in (Path(__file__).parents[1] / "csrc" / "cuda").glob("*.cu"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", SOURCES)
def test_cuda_source_compiles_for_hopper(source, tmp_path):
    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    cmd = [NVCC, "-arch=sm_90a", "-std=c++20", "-O3", "-c", source, "-o", str(tmp_path / "out.o"),
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           *(f"-I{p}" for p in includes)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"nvcc failed on {source}:\n{result.stderr[-4000:]}"


def test_cuda_sources_exist():
    assert SOURCES, "csrc/cuda/ holds no .cu source"
