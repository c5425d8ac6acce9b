"""Shared measurement for the benchmarks, printed as one table at the end: each row's GB/s (memory-bound ops)
or TFLOP/s (attention), its ratio to the group's baseline (eager PyTorch, or the fastest SDPA backend) and its
fraction of the copy bandwidth or bf16 matmul rate measured in the same run. No benchmark asserts speed."""
from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES_MIB = [int(s) for s in os.environ.get("MCM_FAST_BENCH_MIB", "1,16,64,256" if DEVICE.type == "cuda" else "1,16,64").split(",")]
ROWS: list[dict] = []


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def measure(benchmark):
    """measure(fn, group=, impl=, nbytes= or flops=): times fn (synchronized), records GB/s or TFLOP/s under group."""

    def run(fn, *, group: str, impl: str, nbytes: int = 0, size_mib: int = 0, flops: float = 0.0):
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
                         tflops=flops / seconds / 1e12))

    return run


def _baseline(rows):
    """The row each row of a group is compared with: eager PyTorch, else the fastest SDPA backend."""
    eager = [r for r in rows if r["impl"] == "eager"]
    sdpa = [r for r in rows if r["impl"].startswith("sdpa")]
    return eager[0] if eager else min(sdpa, key=lambda r: r["seconds"]) if sdpa else None


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    copy = {r["size_mib"]: r["gbps"] for r in ROWS if r["impl"] == "copy"}
    peak = max((r["tflops"] for r in ROWS if r["impl"] == "matmul"), default=None)
    by_group = defaultdict(list)
    for r in ROWS:
        by_group[r["group"]].append(r)
    write = terminalreporter.write_line
    write(f"\nmcm_fast benchmarks on {DEVICE} ({torch.get_num_threads()} threads), median of 10 rounds")
    write(f"{'group':<36} {'impl':<14} {'ms':>9} {'GB/s':>8} {'TFLOP/s':>8} {'x base':>7} {'of peak':>8}")
    for group, rows in by_group.items():
        base = _baseline(rows)
        for r in rows:
            ratio = f"{base['seconds'] / r['seconds']:.2f}" if base else "-"
            if r["tflops"]:
                frac = f"{r['tflops'] / peak:.0%}" if peak and r["impl"] != "matmul" else "-"
                rate = f"{'-':>8} {r['tflops']:>8.2f}"
            else:
                frac = f"{r['gbps'] / copy[r['size_mib']]:.0%}" if r["size_mib"] in copy else "-"
                rate = f"{r['gbps']:>8.1f} {'-':>8}"
            write(f"{group:<36} {r['impl']:<14} {r['seconds'] * 1e3:>9.3f} {rate} {ratio:>7} {frac:>8}")
