"""Shared measurement for the benchmarks: each row's GB/s, its ratio to eager PyTorch and its fraction of
the copy bandwidth measured in the same run, printed as one table at the end. No benchmark asserts speed."""
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
    """measure(fn, group=, impl=, nbytes=): times fn (synchronized), records GB/s under group."""

    def run(fn, *, group: str, impl: str, nbytes: int, size_mib: int):
        fn()  # warm-up: compilation and first-call costs stay untimed
        synchronize()
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, nbytes=nbytes, device=str(DEVICE))

        def timed():
            fn()
            synchronize()

        benchmark.pedantic(timed, rounds=10, iterations=1, warmup_rounds=2)
        seconds = benchmark.stats.stats.median
        ROWS.append(dict(group=group, impl=impl, seconds=seconds, gbps=nbytes / seconds / 1e9, size_mib=size_mib))

    return run


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    copy = {r["size_mib"]: r["gbps"] for r in ROWS if r["impl"] == "copy"}
    by_group = defaultdict(list)
    for r in ROWS:
        by_group[r["group"]].append(r)
    write = terminalreporter.write_line
    write(f"\nmcm_fast benchmarks on {DEVICE} ({torch.get_num_threads()} threads), median of 10 rounds")
    write(f"{'group':<28} {'impl':<10} {'ms':>9} {'GB/s':>8} {'x eager':>8} {'of copy':>8}")
    for group, rows in by_group.items():
        eager = next((r["seconds"] for r in rows if r["impl"] == "eager"), None)
        for r in rows:
            ratio = f"{eager / r['seconds']:.2f}" if eager else "-"
            frac = f"{r['gbps'] / copy[r['size_mib']]:.0%}" if r["size_mib"] in copy else "-"
            write(f"{group:<28} {r['impl']:<10} {r['seconds'] * 1e3:>9.3f} {r['gbps']:>8.1f} {ratio:>8} {frac:>8}")
