"""Writes the sm_90a section of docs/benchmarks.md: every kernel compiled for the H100/H200 without a GPU
(scripts/sm90.py) with its registers, shared and local memory, occupancy and instruction mix, and the roofline
time of every GPU benchmark row (benchmarks/roofline.py). The section between its two markers is replaced on
each run; the rest of the file is left alone. Exits 1 if a compilation spills or does not fit.
    .venv/bin/python -m scripts.hopper_report            (about 10 minutes on 2 cores)
"""
import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from benchmarks import roofline  # noqa: E402  (run as python -m scripts.hopper_report, from the root)
from scripts import sm90  # noqa: E402

BEGIN, END = "<!-- hopper_report: begin -->", "<!-- hopper_report: end -->"
LONG = max(sm90.ATTENTION_TOKENS)
ORDER = ["_attention_fwd_kernel", "_attention_bwd_preprocess_kernel", "_attention_bwd_dkdv_kernel",
         "_attention_bwd_dq_kernel"]


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _occupancy(k: sm90.Kernel) -> list:
    waves = f"{k.grid / (roofline.PEAKS['H100']['sms'] * k.blocks_per_sm):.1f}" if k.grid and k.blocks_per_sm else "-"
    return [k.regs, f"{k.shared / 1024:.1f}", k.local, k.blocks_per_sm, k.warps_per_sm, waves]


def _widths(k: sm90.Kernel, op: str) -> str:
    return " ".join(f"{n}x{bits}" for bits, n in sorted(k.widths[op].items(), key=lambda x: -int(x[0]))) or "-"


def _head_dim(k: sm90.Kernel) -> int:
    return int(k.call.split(" d")[1].split()[0])


def attention_section(kernels: list[sm90.Kernel]) -> list[str]:
    attention = [k for k in kernels if k.kernel.startswith("_attention")]
    main = sorted((k for k in attention if k.dtype == "bfloat16" and f" N{LONG} " in k.call),
                  key=lambda k: (ORDER.index(k.kernel), _head_dim(k)))
    rows = [[k.kernel.removeprefix("_attention_").removesuffix("_kernel"), _head_dim(k), k.config, *_occupancy(k),
             f"{k.tensor_core} ({k.sass.get('HGMMA', 0) + k.sass.get('HMMA', 0)})", k.sass.get("LDGSTS", 0),
             k.sass.get("LDG", 0)] for k in main]
    lines = [f"### Attention, bfloat16, {LONG} tokens (benchmark shape)", ""]
    lines += _table(["kernel", "d", "config", "regs", "smem KiB", "local B", "blocks/SM", "warps/SM", "waves",
                     "tensor core (instr.)", "cp.async", "ld.global"], rows)
    usage = lambda k: (k.regs, k.shared, k.local)  # noqa: E731
    same = {(k.kernel, _head_dim(k), k.config): usage(k) for k in main}
    differ = [f"`{k.kernel}` d{_head_dim(k)} {k.config} {k.dtype} ({k.call}): {k.regs} regs, {k.shared} B smem"
              for k in attention if k.dtype != "float32" and k not in main
              and same.get((k.kernel, _head_dim(k), k.config), usage(k)) != usage(k)]
    lines += ["", f"float16 and {min(sm90.ATTENTION_TOKENS)} tokens: "
              + ("the same registers and shared memory as above in every compilation." if not differ else
                 "as above except " + "; ".join(differ) + ".")]
    fp32 = sorted((k for k in attention if k.dtype == "float32" and "preprocess" not in k.kernel),
                  key=lambda k: (ORDER.index(k.kernel), _head_dim(k), k.call))
    lines += ["", "float32 (IEEE products on the CUDA cores), both token counts:", ""]
    lines += _table(["kernel", "call", "config", "regs", "smem KiB", "local B", "blocks/SM", "warps/SM", "waves",
                     "tensor core"], [[f"`{k.kernel}`", k.call, k.config, *_occupancy(k), k.tensor_core] for k in fp32])
    return lines


def elementwise_section(kernels: list[sm90.Kernel]) -> list[str]:
    rows = [[f"`{k.kernel}`", k.variant, k.dtype, k.threads // 32, *_occupancy(k), f"{k.bytes_per_element('LDG'):g}",
             f"{k.bytes_per_element('STG'):g}", _widths(k, "LDG"), _widths(k, "STG")]
            for k in kernels if not k.kernel.startswith("_attention")]
    lines = ["### Element-wise Triton kernels (16 samples of 16 MiB; the aDDIM row kernel at 16384 and 784 elements)",
             ""]
    return lines + _table(["kernel", "constexprs", "dtype", "warps", "regs", "smem KiB", "local B", "blocks/SM",
                           "warps/SM", "waves", "B/elem read", "B/elem written", "ld.global (n x bits)",
                           "st.global"], rows)


def cuda_section(kernels: list[sm90.Kernel]) -> list[str]:
    rows = [[k.call, f"`{k.kernel}`", f"`{k.variant}`", k.threads, *_occupancy(k)[:5], _widths(k, "LDG"),
             _widths(k, "STG")]
            for k in kernels]
    lines = ["### CUDA kernels (csrc/cuda, nvcc for sm_90a; threads per block from `__launch_bounds__`)", ""]
    return lines + _table(["file", "kernel", "type", "threads", "regs", "smem KiB", "local B", "blocks/SM",
                           "warps/SM", "ld.global (n x bits)", "st.global"], rows)


def roofline_section() -> list[str]:
    rows = []
    for group, nbytes, flops in roofline.benchmark_calls():
        row = [group, f"{nbytes / 1e6:.1f}", f"{flops / 1e9:.1f}" if flops else "-"]
        row += [f"{roofline.best_seconds(nbytes, flops, gpu) * 1e3:.4f}" for gpu in roofline.PEAKS]
        for lo, hi in roofline.ATTENTION_FRACTIONS.values():
            at = [roofline.best_seconds(nbytes, flops / f, "H100") * 1e3 for f in (hi, lo)] if flops else None
            row.append(f"{at[0]:.3f}-{at[1]:.3f}" if at else "-")
        rows.append(row)
    fractions = ", ".join(f"{k} {lo:.0%}-{hi:.0%}" for k, (lo, hi) in roofline.ATTENTION_FRACTIONS.items())
    lines = ["### Roofline of the GPU benchmark rows", "",
             "Least bytes and FLOPs per call (benchmarks/workloads.py); best time = max(bytes / bandwidth, FLOPs / "
             "dense bf16 rate) at " + ", ".join(f"{g} {p['bandwidth'] / 1e12:g} TB/s and {p['bf16'] / 1e12:g} TFLOP/s"
                                                for g, p in roofline.PEAKS.items())
             + f"; attention also at the fractions of the H100's rate that FlashAttention reports ({fractions}).", ""]
    return lines + _table(["benchmark group", "MB", "GFLOP", "H100 ms", "H200 ms", "H100 ms at FA2",
                           "H100 ms at FA3"], rows)


def _versions() -> str:
    import triton
    nvcc = subprocess.run([sm90.nvcc(), "--version"], capture_output=True, text=True).stdout.split("release ")[-1]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return f"commit {commit}, Triton {triton.__version__} (its ptxas and cuobjdump), nvcc {nvcc.split(',')[0]}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--sample", action="store_true", help="compile the sample the CI test compiles")
    opts = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels")
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor() as nvcc:  # nvcc runs beside Triton
        cuda = [nvcc.submit(sm90.compile_cuda, source, Path(tmp)) for source in sm90.CUDA_SOURCES]
        triton_kernels = [sm90.Kernel(**k) for k in sm90.compile_report(opts.sample, opts.workers)["kernels"]]
        cuda_kernels = []
        for source, future in zip(sm90.CUDA_SOURCES, cuda):
            result, kernels = future.result()
            if result.returncode:
                sys.exit(f"nvcc failed on {source}:\n{result.stderr[-4000:]}")
            cuda_kernels += kernels
    which = "the sample tests/ops/test_sm90_compile.py compiles" if opts.sample else "all"
    problems = [f"{k.kernel} {k.variant} {k.config} {k.dtype}: {p}" for k in triton_kernels + cuda_kernels
                for p in k.problems()]
    lines = [BEGIN, "## sm_90a: every kernel compiled for the H100/H200 without a GPU (issue 20)",
             f"No GPU: compiled ahead of time for sm_90a on the 2-core development machine; {_versions()}. Command: "
             f"`.venv/bin/python -m scripts.hopper_report{' --sample' if opts.sample else ''}` (generated; edits "
             "here are overwritten). Resources "
             "from cuobjdump: registers per thread, shared memory per block (static + dynamic), local memory per "
             "thread (spills); resident blocks and warps per SM by the occupancy rules of compute capability 9.0 "
             "(65536 registers, 228 KiB shared memory with 1 KiB reserved per block, 2048 threads, 32 blocks); "
             "waves = blocks of the benchmark call / (132 SMs x blocks per SM). Instruction counts are static "
             "(SASS): HGMMA is wgmma, HMMA mma.sync, LDGSTS cp.async. "
             f"{len(triton_kernels)} Triton compilations ({which}) and {len(cuda_kernels)} CUDA ones; "
             + (f"{len(problems)} do not fit: " + "; ".join(problems) if problems else "none spills or overflows.")]
    for section in (attention_section(triton_kernels), elementwise_section(triton_kernels),
                    cuda_section(cuda_kernels), roofline_section()):
        lines += [""] + section
    lines.append(END)
    doc = Path(opts.doc)
    text = doc.read_text()
    block = "\n".join(lines)
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)
    print(f"wrote {doc}: {len(triton_kernels)} Triton, {len(cuda_kernels)} CUDA compilations, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
