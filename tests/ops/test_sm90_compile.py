"""Every Triton kernel compiles for the H100/H200 (sm_90a) with Triton's real compiler, without a GPU: at each
autotune configuration, each dtype, each attention head dim and a short and a long token count (scripts/sm90.py).
No compilation may spill to local memory or need more shared memory than an H100 block has; bf16 and fp16
attention must run its matrix products on wgmma, fp32 attention (IEEE) on none; the element-wise kernels read
each input and write each output once, in 16-byte accesses; the autotuned attention configurations keep two
blocks resident per SM.

The compiler runs in a subprocess: this process runs Triton's interpreter (conftest.py), which replaces the
kernels. CI compiles a fixed sample (scripts/sm90.py's sample_jobs: every configuration at every head dim
in bfloat16 and float32, and every other dtype and token count at least once); MCM_FAST_SM90_ALL=1 compiles
all of them (scripts/hopper_report.py always does).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import sm90

ROOT = Path(__file__).resolve().parents[2]

ALL = os.environ.get("MCM_FAST_SM90_ALL") == "1"


def _compiler_missing() -> str | None:
    """Why Triton cannot compile for sm_90a here, or None."""
    try:
        from triton import knobs
        knobs.nvidia.ptxas.path, knobs.nvidia.cuobjdump.path  # noqa: B018 (raises when the wheel lacks them)
    except (ImportError, RuntimeError) as error:
        return f"Triton's CUDA tool chain is unavailable: {error}"
    return None


MISSING = _compiler_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """scripts/sm90.py's report: {"configs": per autotuned kernel, "cases": (kernel, dtype, call) to cover,
    "kernels": the compilations}."""
    out = tmp_path_factory.mktemp("sm90") / "kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "scripts.sm90", "--json", str(out), "--workers", "2"]
    result = subprocess.run(cmd + ([] if ALL else ["--sample"]), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr[-6000:]}"
    report = json.loads(out.read_text())
    report["kernels"] = [sm90.Kernel(**k) for k in report["kernels"]]
    return report


def _name(k: sm90.Kernel) -> str:
    return f"{k.kernel} [{k.variant}] {k.config} {k.dtype} ({k.call})"


def test_every_triton_kernel_and_configuration_compiles(compiled):
    sources = "".join(p.read_text() for p in (ROOT / "kernels").glob("*.py"))
    kernels = set(re.findall(r"@triton\.jit\ndef (\w+_kernel)\(", sources))
    assert kernels and {k.kernel for k in compiled["kernels"]} == kernels
    for kernel, configs in compiled["configs"].items():
        assert {k.config for k in compiled["kernels"] if k.kernel == kernel} == set(configs), kernel
    seen = {(k.kernel, k.dtype, k.call) for k in compiled["kernels"]}
    missing = {tuple(case) for case in compiled["cases"]} - seen
    assert not missing, f"cases left out: {sorted(missing)}"


def test_no_spills_and_shared_memory_fits(compiled):
    problems = [f"{_name(k)}: {p}" for k in compiled["kernels"] for p in k.problems()]
    assert not problems, "\n".join(problems)


def test_attention_matmuls_on_tensor_cores(compiled):
    wrong = [_name(k) for k in compiled["kernels"] if k.kernel.startswith("_attention") and "preprocess" not in k.kernel
             and k.tensor_core != ("-" if k.dtype == "float32" else "wgmma")]
    assert not wrong, "expected wgmma for bf16/fp16 and no tensor core for fp32 (IEEE):\n" + "\n".join(wrong)


def test_autotuned_attention_keeps_two_blocks_per_sm(compiled):
    low = [f"{_name(k)}: {k.blocks_per_sm} ({k.regs} registers, {k.shared} B shared)" for k in compiled["kernels"]
           if k.kernel in compiled["configs"] and k.dtype != "float32" and k.blocks_per_sm < 2]
    assert not low, "\n".join(low)


# Tensors read and written per element by each element-wise kernel, in units of the data's itemsize ("x") or the
# compute dtype's ("c": float32, float64 for float64 data): the design of kernels/ddim.py and kernels/mcm_loss.py.
ELEMENTWISE_IO = {
    "_ddim_step_fwd_kernel": ("xx", "x"),
    "_residual_sq_partials_kernel": ("xx", ""),
    "_addim_step_row_kernel": ("xx", "x"),
    "_mcm_target_fwd_kernel": ("xxx", "x"),
    "_mcm_sqdist_fwd_kernel": (lambda v: "xxxx" if "FUSED_TARGET=1" in v else "xx",
                               lambda v: "c" if "SAVE_DIFF=1" in v else ""),
    "_mcm_sqdist_bwd_kernel": ("c", "x"),
}


def test_elementwise_kernels_move_each_tensor_once_in_16_byte_accesses(compiled):
    size = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
    wrong = []
    for k in compiled["kernels"]:
        if k.kernel not in ELEMENTWISE_IO:
            continue
        units = {"x": size[k.dtype], "c": 8 if k.dtype == "float64" else 4}
        for op, io in zip(("LDG", "STG"), ELEMENTWISE_IO[k.kernel]):
            expected = sum(units[t] for t in (io(k.variant) if callable(io) else io))
            if k.bytes_per_element(op) != expected:
                wrong.append(f"{_name(k)}: {op}.128 moves {k.bytes_per_element(op)} B per element, expected {expected}")
    assert not wrong, "\n".join(wrong)
