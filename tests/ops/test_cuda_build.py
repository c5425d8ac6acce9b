"""The CUDA sources compile with nvcc for sm_90a wherever nvcc exists, even on a machine without a GPU, and no
kernel in them spills to local memory or needs more shared memory or threads than an H100 SM gives a block
(scripts/sm90.py reads each kernel's machine code; its block size is its __launch_bounds__)."""
import pytest

from scripts import sm90


@pytest.mark.skipif(sm90.nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sm90.CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_for_hopper_without_spills(source, tmp_path):
    result, kernels = sm90.compile_cuda(source, tmp_path)
    assert result.returncode == 0, f"nvcc failed on {source}:\n{result.stderr[-4000:]}"
    assert kernels, f"{source}: no kernel in the object"
    problems = [f"{k.kernel}{k.variant}: {p}" for k in kernels for p in k.problems()]
    assert not problems, "\n".join(problems)


def test_cuda_sources_exist():
    assert sm90.CUDA_SOURCES, "csrc/cuda/ holds no .cu source"
