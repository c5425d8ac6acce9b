"""Intra-op threads that follow the cores other processes leave free (issue 33; docs/benchmarks.md).

Torch runs each CPU op on one OpenMP thread per core and waits at a barrier for all of them: when another
process holds one of the cores, every op waits for a thread that has no core, and training on 2 cores beside one
busy process ran at 0.23x its idle speed (1 thread: 0.6x). OpenMP's passive wait halves that loss but costs a
third of the idle speed. `Threads` reads the CPU time of the machine and of this process (Linux's /proc) every
`interval` seconds and sets torch's intra-op threads to the cores the other processes leave free, never more
than torch's own count (OMP_NUM_THREADS or one per core). The count changes a training run's numbers by float
rounding only (oneDNN splits its reductions by thread): a run at a fixed `threads` resumes bit for bit, one
that follows the load to rounding (tests/train/test_threads.py).
"""
from __future__ import annotations

import math
import time

import torch

from mcm_fast._checks import check_int

STAT = "/proc/stat"
SELF_STAT = "/proc/self/stat"
SPARE = 0.2  # a core the others use this little is still ours: a shell, a monitor
LIMIT = torch.get_num_threads()  # torch's own count (OMP_NUM_THREADS or one per core), before any Threads lowered it


def machine_times() -> tuple[int, int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot and the number of CPUs, from /proc/stat; None without it."""
    try:
        with open(STAT) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    ticks = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    cpus = sum(line.startswith("cpu") and line[3:4].isdigit() for line in lines)
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks), cpus


def process_ticks() -> int:
    """User + system clock ticks of this process, all its threads (fields 14 and 15 of /proc/self/stat)."""
    with open(SELF_STAT) as file:
        fields = file.read().rpartition(")")[2].split()  # the name before ")" may hold spaces
    return int(fields[11]) + int(fields[12])


def free_threads(others: float, cpus: int, limit: int) -> int:
    """The threads to run beside other processes that kept `others` cores busy: the cores they leave free (a core
    they use at most SPARE of counts as free), at least 1 and at most limit."""
    return max(1, min(limit, cpus - math.ceil(others - SPARE)))


class Threads:
    """Sets torch's intra-op threads: a fixed count, or (threads=None) the cores other processes leave free,
    measured over the last `interval` seconds. Call it often from the thread that runs the ops (OpenMP's thread
    count is that thread's own): once per training step, or as a forward pre-hook,
    `net.register_forward_pre_hook(threads)`. A call reads /proc at most once an interval; without /proc (not
    Linux) it keeps torch's count."""

    def __init__(self, threads: int | None = None, interval: float = 1.0):
        if threads is not None:
            check_int("threads", threads, 1)
            torch.set_num_threads(threads)
        self.fixed, self.interval = threads, interval
        self.last = self._sample()

    @staticmethod
    def _sample():
        times = machine_times()
        return None if times is None else (time.monotonic(), *times, process_ticks())

    def __call__(self, *_) -> None:
        if self.fixed is not None or self.last is None or time.monotonic() - self.last[0] < self.interval:
            return
        now = self._sample()
        (_, busy0, total0, _, own0), (_, busy1, total1, cpus, own1) = self.last, now
        self.last = now
        if total1 > total0:
            others = max(busy1 - busy0 - (own1 - own0), 0) / (total1 - total0) * cpus  # cores
            threads = free_threads(others, cpus, LIMIT)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)


def governed(module: torch.nn.Module, threads: int | None = None, interval: float = 1.0) -> torch.nn.Module:
    """module, whose every call first sets torch's threads by Threads(threads, interval): for the commands that
    sample."""
    module.register_forward_pre_hook(Threads(threads, interval))
    return module
