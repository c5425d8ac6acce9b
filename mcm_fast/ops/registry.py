"""One table (op, backend) -> implementation, and the choice of backend for a call.

Backends, fastest first: cuda (csrc/cuda), triton (kernels/), cpu (csrc/, C++ with OpenMP), sdpa (torch's
scaled_dot_product_attention, for attention only, on any device) and reference (plain PyTorch, always there).
The default is the fastest that implements the op and can run the call (never Triton's interpreter, which
runs CPU tensors under TRITON_INTERPRET=1 for tests only); a backend named by the `backend=` argument or by
MCM_FAST_BACKEND that cannot run it is an error listing why, never a fallback.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

BACKENDS = ("cuda", "triton", "cpu", "sdpa", "reference")

_IMPLS: dict[tuple[str, str], Callable] = {}
_DIFFERENTIABLE: set[tuple[str, str]] = set()
_SUPPORTS: dict[tuple[str, str], Callable] = {}


def register(op: str, backend: str, differentiable: bool = False, supports: Callable | None = None):
    """Decorator: fn implements op on backend; differentiable says whether autograd flows through it;
    supports(*args) returns why fn cannot take those arguments (e.g. a head dim), or None."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")

    def wrap(fn: Callable) -> Callable:
        _IMPLS[op, backend] = fn
        if differentiable:
            _DIFFERENTIABLE.add((op, backend))
        if supports is not None:
            _SUPPORTS[op, backend] = supports
        return fn

    return wrap


def runs_on(backend: str, device: torch.device) -> bool:
    if backend == "cuda":
        return device.type == "cuda"
    if backend == "triton":
        return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    if backend == "cpu":
        return device.type == "cpu"
    return True


def available_backends(op: str | None = None) -> list[str]:
    """The backends this install can run on some device here, fastest first ("reference" always).

    With op (e.g. "ddim_step", "attention"), only those implementing it: "sdpa" serves attention alone.
    """
    ops = sorted({o for o, _ in _IMPLS})
    if op is not None and op not in ops:
        raise ValueError(f"op: expected None or one of {', '.join(ops)}, got {op!r}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [
        b for b in BACKENDS
        if any(ob == b and (op is None or o == op) for o, ob in _IMPLS) and any(runs_on(b, dev) for dev in devices)
    ]


def _why_not(op: str, backend: str, device: torch.device, needs_grad: bool, args: tuple = ()) -> str | None:
    if (op, backend) not in _IMPLS:
        if any(ob == backend for _, ob in _IMPLS):
            return f"does not implement {op}"
        return {"cpu": "the extension mcm_fast._C is not built", "cuda": "the extension has no CUDA part",
                "triton": "triton is not installed"}.get(backend, "not in this install")
    if not runs_on(backend, device):
        return f"cannot run on {device.type} tensors"
    if needs_grad and (op, backend) not in _DIFFERENTIABLE:
        return "has no backward and an input requires grad"
    if args and (op, backend) in _SUPPORTS:
        return _SUPPORTS[op, backend](*args)
    return None


def dispatch(op: str, device: torch.device, needs_grad: bool, backend: str | None = None, args: tuple = ()) -> Callable:
    """The implementation of op to call for tensors on device (see the module docstring for the rule); with
    args, the call's arguments, backends that cannot take them (registered `supports`) are passed over."""
    source = "backend"
    if backend is None and os.environ.get("MCM_FAST_BACKEND"):
        backend, source = os.environ["MCM_FAST_BACKEND"], "MCM_FAST_BACKEND"
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{source}: expected one of {BACKENDS} or None, got {backend!r}")
        why = _why_not(op, backend, device, needs_grad, args)
        if why is not None:
            reasons = "; ".join(f"{b}: {_why_not(op, b, device, needs_grad, args) or 'ok'}" for b in BACKENDS)
            raise RuntimeError(f"{source}={backend!r} cannot run {op} here: {why} ({reasons})")
        return _IMPLS[op, backend]
    for candidate in BACKENDS:
        if candidate == "triton" and device.type != "cuda":
            continue
        if _why_not(op, candidate, device, needs_grad, args) is None:
            return _IMPLS[op, candidate]
    raise RuntimeError(f"no backend can run {op} on {device.type}")  # unreachable: reference always runs


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record a call on these tensors."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
