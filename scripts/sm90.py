"""Every kernel of mcm_fast compiled ahead of time for the H100/H200 (sm_90a) on a machine without a GPU, and
what the machine code says: registers, shared and local memory, resident blocks per SM, instruction mix.

Triton kernels are compiled the way their launchers would launch them: each launcher in kernels/ runs on meta
tensors with torch.library.wrap_triton replaced by a recorder, and each recorded launch (and each autotune
configuration of it) goes through Triton's own argument specialization and compiler for GPUTarget("cuda", 90,
32), the target Triton's CUDA driver reports on an H100 or H200 (so the compiled kernels are those a launch there
would compile). CUDA kernels (csrc/cuda/*.cu) are compiled by nvcc for sm_90a. Resources come from the cuobjdump that
Triton's wheel ships. Shared by tests/ops/test_sm90_compile.py, tests/ops/test_cuda_build.py and
scripts/hopper_report.py; run with TRITON_INTERPRET unset (the interpreter replaces the kernels and the autotune lists).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from benchmarks.workloads import ATTENTION_TOKENS, BATCH, attention_shape, elementwise_numel

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted(ROOT.glob("csrc/cuda/*.cu"))

# The H100 SXM / H200 (compute capability 9.0): CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability" and the Hopper tuning guide.
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are given to a warp in units of 256 (8 per thread)
SMEM_PER_SM = 228 * 1024
SMEM_PER_BLOCK = 227 * 1024  # the opt-in limit of one block
SMEM_RESERVED_PER_BLOCK = 1024  # taken by the driver from every resident block, added to what cuobjdump reports
SMEM_ALLOC_UNIT = 128
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32


@dataclasses.dataclass
class Kernel:
    """One compiled kernel: where it came from, its launch shape and what its machine code uses."""
    kernel: str  # Triton function or CUDA kernel name
    variant: str  # constexprs / template arguments that select this compilation
    config: str  # autotune configuration ("-" where none)
    dtype: str
    threads: int  # per block (program)
    regs: int  # per thread
    shared: int  # bytes per block, static + dynamic
    local: int  # bytes of local memory per thread (spills, stack)
    spill_ops: int  # LDL + STL instructions
    sass: dict  # opcode (first dotted part) -> count
    widths: dict  # "LDG" / "STG" -> {bits: count}
    elements: int = 0  # elements per program of an element-wise Triton kernel (no loop): 0 otherwise
    grid: int = 0  # blocks at the call this compilation was made for (0: unknown)
    call: str = ""  # the launcher call that launches it

    @property
    def blocks_per_sm(self) -> int:
        return resident_blocks(self.threads, self.regs, self.shared)

    @property
    def warps_per_sm(self) -> int:
        return self.blocks_per_sm * self.threads // 32

    @property
    def tensor_core(self) -> str:
        """wgmma (HGMMA in SASS), mma.sync (HMMA) or none."""
        return "wgmma" if self.sass.get("HGMMA") else "mma" if self.sass.get("HMMA") else "-"

    def bytes_per_element(self, op: str) -> float:
        """Bytes that a program's 16-byte LDG or STG instructions move per element it owns (element-wise kernels;
        the per-sample scalars each thread loads are narrower and left out)."""
        return self.widths.get(op, {}).get("128", 0) * 16 * self.threads / self.elements if self.elements else 0.0

    def problems(self) -> list[str]:
        """Why this compilation must not ship: spills, or more shared memory or threads than a block can have."""
        found = []
        if self.local or self.spill_ops:
            found.append(f"spills: {self.local} B local memory per thread, {self.spill_ops} LDL/STL")
        if self.shared > SMEM_PER_BLOCK:
            found.append(f"shared memory {self.shared} B > {SMEM_PER_BLOCK} B per block")
        if not self.blocks_per_sm:
            found.append("no block fits on an SM")
        return found


def resident_blocks(threads: int, regs: int, shared: int) -> int:
    """Blocks of one kernel resident on an H100 SM at once (the CUDA occupancy calculator's rule)."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = REGS_PER_SM // regs_per_warp // warps
    smem = math.ceil((shared + SMEM_RESERVED_PER_BLOCK) / SMEM_ALLOC_UNIT) * SMEM_ALLOC_UNIT
    by_smem = SMEM_PER_SM // smem if shared <= SMEM_PER_BLOCK else 0
    return min(by_regs, by_smem, MAX_THREADS_PER_SM // threads, MAX_BLOCKS_PER_SM)


# --- machine code -------------------------------------------------------------------------------------------

def cuobjdump() -> str:
    """The cuobjdump of Triton's wheel (the CUDA toolkit's on a machine that has one and no Triton)."""
    from triton import knobs
    return knobs.nvidia.cuobjdump.path


_RESOURCE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_FUNCTION = re.compile(r"\s+Function : (\S+)")
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)")
_WIDTH = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}


def machine_code(binary: Path) -> dict[str, dict]:
    """{function: {regs, stack, shared, local, sass, widths, spill_ops}} of a cubin or an object with device code."""
    tool = cuobjdump()
    usage = subprocess.run([tool, "--dump-resource-usage", str(binary)], capture_output=True, text=True, check=True)
    functions = {m[1]: dict(regs=int(m[2]), stack=int(m[3]), shared=int(m[4]), local=int(m[5]), sass={},
                            widths={"LDG": {}, "STG": {}}) for m in _RESOURCE.finditer(usage.stdout)}
    sass = subprocess.run([tool, "--dump-sass", str(binary)], capture_output=True, text=True, check=True).stdout
    current = None
    for line in sass.splitlines():
        if m := _FUNCTION.match(line):
            current = functions[m[1]]
        elif current is not None and (m := _INSTRUCTION.search(line)):
            op, suffixes = m[1], m[2].split(".")
            current["sass"][op] = current["sass"].get(op, 0) + 1
            if op in ("LDG", "STG"):
                bits = next((_WIDTH[s] for s in suffixes if s in _WIDTH), 32)
                current["widths"][op][str(bits)] = current["widths"][op].get(str(bits), 0) + 1
    for f in functions.values():
        f["spill_ops"] = f["sass"].get("LDL", 0) + f["sass"].get("STL", 0)
    return functions


# --- Triton -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Launch:
    """One launch a launcher made: the kernel (JITFunction or Autotuner), its grid and arguments."""
    call: str
    dtype: str  # of the call's data
    kernel: object
    grid: object
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def recording(launches: list, call: str, dtype: str):
    """Replaces wrap_triton in the kernel modules by a recorder that appends each launch and runs nothing."""
    from mcm_fast.kernels import attention, ddim, mcm_loss

    def wrap(kernel):
        class Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.append(Launch(call, dtype, kernel, grid, args, kwargs))
        return Grid()

    modules = (attention, ddim, mcm_loss)
    saved = [m.wrap_triton for m in modules]
    for m in modules:
        m.wrap_triton = wrap
    try:
        yield
    finally:
        for m, w in zip(modules, saved):
            m.wrap_triton = w


COMPILED_DTYPES = ("float32", "bfloat16", "float16")  # those of attention; the element-wise kernels also take float64


def triton_calls():
    """(call, dtype, launcher, args) that reach every Triton kernel and every variant of it: each dtype, the
    aDDIM row kernel at its largest and at MNIST's 28 x 28, the two-pass paths, the fused and unfused distances,
    each attention head dim at the benchmark's shortest and longest token counts; element-wise sizes are the
    benchmarks' (16 samples, 16 MiB a tensor), attention shapes the benchmark's (65536 tokens a call)."""
    import torch

    from mcm_fast.kernels import attention, ddim, mcm_loss
    from mcm_fast.kernels.ddim import ROW_MAX

    meta = lambda shape, dtype: torch.empty(shape, device="meta", dtype=dtype)  # noqa: E731
    per_sample = lambda: meta((BATCH,), torch.float64)  # noqa: E731
    for name in COMPILED_DTYPES + ("float64",):
        dtype = getattr(torch, name)
        d = elementwise_numel(16, dtype.itemsize) // BATCH
        x = lambda d=d, dtype=dtype: meta((BATCH, d), dtype)  # noqa: E731
        logsnrs = (per_sample(), per_sample())
        yield f"ddim_step d{d}", name, ddim.ddim_step, (x(), x(), *logsnrs)
        for size in (d, ROW_MAX, 28 * 28):
            yield f"addim_step d{size}", name, ddim.ddim_step, (x(size), x(size), *logsnrs, per_sample())
        yield f"mcm_target d{d}", name, mcm_loss.mcm_target, (x(), x(), x(), *logsnrs, per_sample())
        for save_diff in (False, True):
            yield f"mcm_sqdist d{d} diff={save_diff}", name, mcm_loss.mcm_sqdist, (x(), x(), save_diff)
            yield (f"mcm_target_sqdist d{d} diff={save_diff}", name, mcm_loss.mcm_sqdist,
                   (x(), x(), save_diff, x(), x(), (*logsnrs, per_sample())))
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        yield (f"mcm_sqdist_backward d{d}", name, mcm_loss.mcm_sqdist_backward,
               (meta((BATCH, d), compute), per_sample(), dtype))
    for name in COMPILED_DTYPES:
        dtype = getattr(torch, name)
        for head_dim in attention.HEAD_DIMS:
            for tokens in (min(ATTENTION_TOKENS), max(ATTENTION_TOKENS)):
                shape = attention_shape(tokens, head_dim)
                q, k, v, o, do = (meta(shape, dtype) for _ in range(5))
                lse = meta(shape[:3], torch.float32)
                call = f"attention N{tokens} d{head_dim}"
                yield f"{call} fwd", name, attention.attention_forward, (q, k, v)
                yield f"{call} bwd", name, attention.attention_backward, (do, q, k, v, o, lse)


def triton_launches() -> list[Launch]:
    """Every launch of triton_calls(), in order."""
    launches = []
    for call, dtype, fn, args in triton_calls():
        with recording(launches, call, dtype):
            fn(*args)
    return launches


def _variant(kwargs: dict) -> str:
    """The constexprs that select a compilation, short: BLOCK=4096 ADJUSTED=1 ..."""
    skip = ("num_warps", "num_stages", "COMPUTE", "PRECISION")
    return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in kwargs.items() if k not in skip)


def compile_jobs(launches: list[Launch]) -> list[tuple[int, int]]:
    """(launch index, autotune configuration index or -1) of every distinct compilation the launches need: each
    configuration an autotuned kernel can pick for the launch (after its early_config_prune)."""
    jobs, seen = [], set()
    for i, launch in enumerate(launches):
        for c in configs_of(launch):
            key = _compile_key(launch, c)
            if key not in seen:
                seen.add(key)
                jobs.append((i, c))
    return jobs


def configs_of(launch: Launch) -> list[int]:
    """Indices of the autotune configurations the launch may run ([-1] for a kernel without autotuning)."""
    kernel = launch.kernel
    if not getattr(kernel, "configs", None):
        return [-1]
    configs = kernel.configs
    if kernel.early_config_prune:
        named = dict(zip(kernel.arg_names, launch.args))
        configs = kernel.early_config_prune(kernel.configs, named, **launch.kwargs)
    return [kernel.configs.index(c) for c in configs]


def config_name(config) -> str:
    """BLOCK_M=128 BLOCK_N=64 w8 s3: an autotune configuration's block sizes, warps and stages."""
    return " ".join(f"{k}={v}" for k, v in config.kwargs.items()) + f" w{config.num_warps} s{config.num_stages}"


def _kwargs(launch: Launch, config: int) -> dict:
    extra = launch.kernel.configs[config].all_kwargs() if config >= 0 else {}
    return {**launch.kwargs, **extra}


def _jit(launch: Launch):
    """The JITFunction of a launch (an Autotuner wraps one)."""
    from triton.runtime.autotuner import Autotuner
    return launch.kernel.fn if isinstance(launch.kernel, Autotuner) else launch.kernel


def _specialize(launch: Launch, config: int):
    """What Triton's JIT passes to its compiler for this launch: (source, options), as JITFunction.run does."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    jit = _jit(launch)
    backend = make_backend(GPUTarget("cuda", 90, 32))
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    args = [MockTensor(a.dtype, list(a.shape)) if isinstance(a, torch.Tensor) else a for a in launch.args]
    kwargs = {"debug": False, **_kwargs(launch, config)}
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(jit, signature, constexprs, attrs), options


def _compile_key(launch: Launch, config: int) -> str:
    source, options = _specialize(launch, config)
    return f"{source.hash()}-{options.hash()}"


def _grid(launch: Launch, config: int) -> int:
    grid = launch.grid(_kwargs(launch, config)) if callable(launch.grid) else launch.grid
    return math.prod(grid)


def compile_triton(launch: Launch, config: int) -> Kernel:
    """Compiles one launch (at one autotune configuration) for sm_90a and reads its machine code."""
    import triton
    from triton.backends.compiler import GPUTarget

    source, options = _specialize(launch, config)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        (code,) = machine_code(cubin).values()
    kwargs = _kwargs(launch, config)
    variant = {k: v for k, v in launch.kwargs.items() if k not in ("num_warps",)}
    name = config_name(launch.kernel.configs[config]) if config >= 0 else f"w{compiled.metadata.num_warps}"
    elements = next((kwargs[k] for k in ("BLOCK", "BLOCK_D") if k in kwargs), 0)
    return Kernel(kernel=_jit(launch).__name__, variant=_variant(variant), config=name, dtype=launch.dtype,
                  threads=compiled.metadata.num_warps * 32, regs=code["regs"],
                  shared=code["shared"] + compiled.metadata.shared, local=code["local"] + code["stack"],
                  spill_ops=code["spill_ops"], sass=code["sass"], widths=code["widths"], elements=elements,
                  grid=_grid(launch, config), call=launch.call)


# --- CUDA ---------------------------------------------------------------------------------------------------

def nvcc() -> str | None:
    return shutil.which("nvcc")


def nvcc_command(source: Path, output: Path) -> list[str]:
    """nvcc for sm_90a on torch's headers; a CPU build of torch ships the CUDA headers but not the generated
    c10/cuda/impl/cuda_cmake_macros.h, which C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips (setup.py on a CUDA torch
    does not need it)."""
    import torch
    from torch.utils import cpp_extension
    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    return [nvcc(), "-gencode=arch=compute_90a,code=sm_90a", "-std=c++20", "-O3", "-c", str(source), "-o",
            str(output), f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", *(f"-I{p}" for p in includes)]


_LAUNCH_BOUNDS = re.compile(r"constexpr int (k\w*Threads) = (\d+)")


def compile_cuda(source: Path, workdir: Path) -> tuple[subprocess.CompletedProcess, list[Kernel]]:
    """nvcc's result for one .cu file and, when it compiled, each kernel (template instance) in it. A kernel's
    threads per block is its __launch_bounds__, which every kernel in csrc/cuda declares."""
    output = workdir / (source.stem + ".o")
    result = subprocess.run(nvcc_command(source, output), capture_output=True, text=True, timeout=3600)
    if result.returncode:
        return result, []
    elf = subprocess.run([cuobjdump(), "--dump-elf", str(output)], capture_output=True, text=True, check=True).stdout
    kernels = []
    for mangled, code in machine_code(output).items():
        name = _demangle(mangled)
        kernels.append(Kernel(kernel=name.split("<")[0], variant=name[len(name.split("<")[0]):] or "-", config="-",
                              dtype=_cuda_dtype(name), threads=_max_threads(elf, mangled), regs=code["regs"],
                              shared=code["shared"], local=code["local"] + code["stack"],
                              spill_ops=code["spill_ops"], sass=code["sass"], widths=code["widths"],
                              call=source.name))
    return result, kernels


def _demangle(mangled: str) -> str:
    """mcm_fast::(anonymous namespace)::ddim_kernel<float>(float const*, ...) -> ddim_kernel<float>."""
    filt = shutil.which("c++filt")
    if not filt:
        return mangled
    name = subprocess.run([filt, mangled], capture_output=True, text=True, check=True).stdout.strip()
    return re.sub(r"^(void )?(\w+::)*", "", name.replace("(anonymous namespace)::", "").split("(")[0])


def _cuda_dtype(name: str) -> str:
    for cpp, dtype in (("c10::BFloat16", "bfloat16"), ("c10::Half", "float16"), ("double", "float64"),
                       ("float", "float32")):
        if cpp in name:
            return dtype
    return "-"


def _max_threads(elf: str, mangled: str) -> int:
    """The block size a kernel declared with __launch_bounds__ (EIATTR_MAX_THREADS in its .nv.info section)."""
    sections = re.split(r"\n(?=\.)", elf)  # each section's dump starts with its name at the start of a line
    info = next((sec for sec in sections if sec.split(None, 1)[0] == f".nv.info.{mangled}"), "")
    found = re.search(r"EIATTR_MAX_THREADS\s+Format:\s*\S+\s+Value:\s*0x([0-9a-f]+)", info)
    if not found:
        raise ValueError(f"{mangled}: no __launch_bounds__ (EIATTR_MAX_THREADS) in its .nv.info")
    return int(found[1], 16)


# --- the command line: Triton's compilations as JSON, for the test and the report -----------------------------

def _compile_job(job):
    return dataclasses.asdict(compile_triton(_LAUNCHES[job[0]], job[1]))


def _init_worker():
    global _LAUNCHES
    _LAUNCHES = triton_launches()


def compile_report(sample: bool, workers: int = 1) -> dict:
    """{"configs": each autotuned kernel's configurations, "cases": every (kernel, dtype, call) to compile,
    "kernels": the Kernel dicts compiled}: all compilations, or with sample a subset covering every case and
    configuration (see sample_jobs); on `workers` processes."""
    from concurrent.futures import ProcessPoolExecutor
    launches = triton_launches()
    jobs = compile_jobs(launches)
    configs = {_jit(lc).__name__: [config_name(c) for c in lc.kernel.configs]
               for lc in launches if getattr(lc.kernel, "configs", None)}
    cases = sorted({_case(launches, job) for job in jobs})
    with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
        kernels = list(pool.map(_compile_job, sample_jobs(jobs, launches) if sample else jobs))
    return {"configs": configs, "cases": cases, "kernels": kernels}


def _case(launches, job) -> tuple[str, str, str]:
    launch = launches[job[0]]
    return _jit(launch).__name__, launch.dtype, launch.call


def sample_jobs(jobs, launches):
    """Each configuration an autotuned kernel may pick at the long token count in bfloat16 (the benchmarks' dtype)
    and float32, and every other case (float16, the short token count) once, at configurations taken in turn."""
    chosen, turn = [], {}
    for job in jobs:
        launch = launches[job[0]]
        configs = configs_of(launch)
        full = launch.dtype in ("bfloat16", "float32") and f" N{max(ATTENTION_TOKENS)} " in launch.call
        if configs == [-1] or full:
            chosen.append(job)
            continue
        n = turn.setdefault((job[0]), len(turn))
        if job[1] == configs[n % len(configs)]:
            chosen.append(job)
    return chosen


if __name__ == "__main__":
    import argparse
    import json
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the report")
    parser.add_argument("--sample", action="store_true", help="compile a sample covering every case (sample_jobs)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    opts = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels")
    Path(opts.json).write_text(json.dumps(compile_report(opts.sample, opts.workers)))
