"""Shared measurement for the benchmarks, printed as one table at the end: each row's GB/s (memory-bound ops),
TFLOP/s (attention, networks) and images/s (sampling, training), its ratio to the group's baseline (eager
PyTorch, or the fastest SDPA backend) and its fraction of the copy bandwidth or of the bf16 (CPU: float32) matmul
rate measured in the same run; on an H100 or H200 also the row's roofline time from the public peaks
(benchmarks/roofline.py) and the fraction of it reached. No benchmark asserts speed."""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections import defaultdict

import pytest
import torch

from benchmarks import roofline
from benchmarks.workloads import GPU_SIZES_MIB

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DEFAULT_MIB = ",".join(map(str, GPU_SIZES_MIB)) if DEVICE.type == "cuda" else "1,16,64"
SIZES_MIB = [int(s) for s in os.environ.get("MCM_FAST_BENCH_MIB", DEFAULT_MIB).split(",")]
ROWS: list[dict] = []


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def measure(benchmark):
    """measure(fn, group=, impl=, nbytes= or flops=, items=): times fn (synchronized), records GB/s or TFLOP/s
    (and items, images, per second) under group."""

    def run(fn, *, group: str, impl: str, nbytes: int = 0, size_mib: int = 0, flops: float = 0.0, items: int = 0):
        fn()  # warm-up: compilation and first-call costs stay untimed
        synchronize()
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, nbytes=nbytes, device=str(DEVICE))

        def timed():
            fn()
            synchronize()

        benchmark.pedantic(timed, rounds=10, iterations=1, warmup_rounds=2)
        seconds = benchmark.stats.stats.median
        ROWS.append(dict(group=group, impl=impl, seconds=seconds, gbps=nbytes / seconds / 1e9, size_mib=size_mib,
                         tflops=flops / seconds / 1e12, items=items / seconds, nbytes=nbytes, flops=flops))

    return run


def _baseline(rows):
    """The row each row of a group is compared with: eager PyTorch, else the fastest SDPA backend."""
    eager = [r for r in rows if r["impl"] == "eager"]
    sdpa = [r for r in rows if r["impl"].startswith("sdpa")]
    return eager[0] if eager else min(sdpa, key=lambda r: r["seconds"]) if sdpa else None


def matmul_peak() -> float:
    """TFLOP/s of a large bf16 (CPU: float32) matrix product on random data, median of 10."""
    n, dtype = (8192, torch.bfloat16) if DEVICE.type == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=DEVICE, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(12):
        synchronize()
        start = time.perf_counter()
        a @ b
        synchronize()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times[2:]) / 1e12


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    copy = {r["size_mib"]: r["gbps"] for r in ROWS if r["impl"] == "copy"}
    peak = matmul_peak() if any(r["tflops"] for r in ROWS) else None
    by_group = defaultdict(list)
    for r in ROWS:
        by_group[r["group"]].append(r)
    write = terminalreporter.write_line
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    gpu = roofline.device(name)  # an H100 or H200: each row against its roofline (benchmarks/roofline.py)
    write(f"\nmcm_fast benchmarks on {DEVICE} ({name}), median of 10 rounds; "
          f"matmul peak {peak or 0:.1f} TFLOP/s measured now" + (f"; roofline of the {gpu}'s peaks" if gpu else ""))
    write(f"{'group':<40} {'impl':<14} {'ms':>9} {'GB/s':>8} {'TFLOP/s':>8} {'img/s':>9} {'x base':>7} {'of peak':>8}"
          + (f" {'roof ms':>9} {'of roof':>8}" if gpu else ""))
    for group, rows in by_group.items():
        base = _baseline(rows)
        for r in rows:
            ratio = f"{base['seconds'] / r['seconds']:.2f}" if base else "-"
            if r["tflops"]:
                frac = f"{r['tflops'] / peak:.1%}" if peak else "-"
                rate = f"{'-':>8} {r['tflops']:>8.3f}"
            else:
                frac = f"{r['gbps'] / copy[r['size_mib']]:.0%}" if r["size_mib"] in copy else "-"
                rate = f"{r['gbps']:>8.1f} {'-':>8}"
            items = f"{r['items']:>9.1f}" if r["items"] else f"{'-':>9}"
            roof = ""
            if gpu:
                best = roofline.best_seconds(r["nbytes"], r["flops"], gpu)
                roof = f" {best * 1e3:>9.3f} {best / r['seconds']:>8.0%}"
            write(f"{group:<40} {r['impl']:<14} {r['seconds'] * 1e3:>9.3f} {rate} {items} {ratio:>7} {frac:>8}{roof}")


def forward_flops(net: torch.nn.Module, shape: tuple, num_classes: int) -> float:
    """FLOPs of one forward pass of a UViT on a batch of `shape`, counted by torch's FlopCounterMode on a copy
    on the meta device with the reference attention (so that attention's matrix products are counted too)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mcm_fast.models import UViT
    meta = UViT(dataclasses.replace(net.config, attention_backend="reference")).to("meta")
    z = torch.empty(shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        meta(z, torch.zeros(shape[0], device="meta"), torch.zeros(shape[0], dtype=torch.long, device="meta")
             if num_classes else None)
    return float(counter.get_total_flops())
