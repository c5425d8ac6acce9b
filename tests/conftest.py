"""Makes tests/ helpers (closed_form, parity) and the repository root (experiments/) importable from the tests,
and runs the Triton kernels on CPU tensors through Triton's interpreter where there is no GPU (style.md)."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when @triton.jit runs, so before mcm_fast imports kernels


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Every test picks its backends itself: MCM_FAST_BACKEND from the caller's shell must not leak in."""
    monkeypatch.delenv("MCM_FAST_BACKEND", raising=False)


@pytest.fixture(autouse=True)
def _fixed_threads(monkeypatch):
    """Tests hold torch's thread count, as they hold seeds: the count changes a run's bits (by rounding), and the
    machine's load must not. mcm_fast.threads then sees no /proc; tests/train/test_threads.py gives it one."""
    monkeypatch.setattr("mcm_fast.threads.machine_times", lambda: None)


@pytest.fixture
def gen(request):
    """A torch.Generator seeded by the test id: every test draws its own, reproducible inputs."""
    from parity import generator

    return generator(request)
