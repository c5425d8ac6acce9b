"""Checkpoints: safetensors files for tensors and one checkpoint.json for everything else, written atomically
and loaded without unpickling anything (a checkpoint from elsewhere runs no code).

A run directory holds one subdirectory per checkpoint:

    step-000001000/
        checkpoint.json      {"format": "mcm_fast.checkpoint", "version": 1, "step": 1000,
                              "entries": {"model": "module", "ema": "module", "optimizer": "optimizer", ...},
                              "optimizer": <its param_groups and non-tensor state>, "config": {...}, ...}
        model.safetensors    one file per module, optimizer, tensor dict or tensor entry
        ema.safetensors, optimizer.safetensors, ...

A save writes a .tmp-* directory, fsyncs it and renames it to step-*: a crash at any moment leaves the earlier
checkpoints intact and at most a stray .tmp-* directory, which loading ignores and the next save removes.
One process (rank 0) writes to a run directory at a time.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mcm_fast.train.distributed import unwrap

FORMAT = "mcm_fast.checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
TMP_PREFIX = ".tmp-"
STEP_DIR = re.compile(r"step-(\d+)")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = ("format", "version", "step", "entries")
KINDS = ("module", "tensors", "optimizer", "tensor", "json")
JSON_SCALARS = (type(None), bool, int, float, str)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")


def save_checkpoint(directory, model, *, step: int, keep: int | None = 3, **state) -> Path:
    """Writes model and state as checkpoint step-{step:09d} of the run directory; returns its path.

    state values: nn.Modules (saved as state dicts), optimizers or their state dicts, dicts of str -> Tensor,
    Tensors, or JSON values. The newest `keep` checkpoints stay (None keeps all), always the one just written.
    """
    if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, Integral) or keep < 1):
        raise ValueError(f"keep: expected None or an integer >= 1, got {keep!r}")
    if not isinstance(model, (nn.Module, Mapping)):
        raise TypeError(f"model: expected an nn.Module or its state dict, got {type(model).__name__}")
    step = int(step)
    files = {"model": _tensor_dict("model", unwrap(model).state_dict() if isinstance(model, nn.Module) else model)}
    manifest = {"format": FORMAT, "version": VERSION, "step": step,
                "entries": {"model": "module" if isinstance(model, nn.Module) else "tensors"}}
    for name, value in state.items():
        if not NAME.fullmatch(name) or name in RESERVED:
            raise ValueError(f"{name}: expected an identifier other than {', '.join(RESERVED)} as an entry name")
        kind, tensors, value = _split(name, value)
        manifest["entries"][name] = kind
        if tensors is not None:
            files[name] = _tensor_dict(name, tensors)
        if value is not None:
            manifest[name] = value

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stray in directory.glob(TMP_PREFIX + "*"):  # left by a save that crashed
        if stray.is_dir():
            shutil.rmtree(stray)
    target = directory / f"step-{step:09d}"
    tmp = directory / f"{TMP_PREFIX}{target.name}"
    tmp.mkdir()
    mode = tmp.stat().st_mode & 0o666  # the umask's file mode: safetensors itself writes owner-only files
    for name, tensors in files.items():
        save_file(tensors, tmp / f"{name}.safetensors")
        os.chmod(tmp / f"{name}.safetensors", mode)
        _fsync(tmp / f"{name}.safetensors")
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)
    aside = directory / f"{TMP_PREFIX}old-{target.name}"
    if target.exists():  # a rerun of this step: the old copy goes only once the new one is in place
        os.rename(target, aside)
    os.rename(tmp, target)
    _fsync(directory)
    if aside.exists():
        shutil.rmtree(aside)
    if keep is not None:
        for _, old in _checkpoints(directory)[:-keep]:
            if old != target:
                _remove(old)
    return target


def latest_checkpoint(directory) -> Path | None:
    """The step-* checkpoint of a run directory with the highest step and a valid checkpoint.json, or None.

    Stray .tmp-* directories and step-* directories without a readable manifest are not checkpoints.
    """
    checkpoints = _checkpoints(Path(directory), first_only=True)
    return checkpoints[-1][1] if checkpoints else None


def load_checkpoint(path, device: str | torch.device = "cpu") -> dict:
    """{"step": int, "model": state dict, and each saved entry} of a step-* directory or a run's latest one.

    Tensors load with safetensors onto device; optimizer state dicts as load_state_dict expects them.
    """
    path = _resolve(Path(path))
    manifest = _read_manifest(path)
    file = path / MANIFEST
    if manifest.get("version") != VERSION:
        raise ValueError(f"{file}: expected version {VERSION}, got {manifest.get('version')!r}")
    step, entries = manifest.get("step"), manifest.get("entries")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{file}: expected 'step' an integer >= 0, got {step!r}")
    if not (isinstance(entries, dict) and "model" in entries and all(
            isinstance(n, str) and NAME.fullmatch(n) and k in KINDS for n, k in entries.items())):
        raise ValueError(f"{file}: expected 'entries' mapping 'model' and other names to one of {KINDS}, "
                         f"got {entries!r}")
    out = {"step": step}
    for name, kind in entries.items():
        if kind in ("json", "optimizer") and name not in manifest:
            raise ValueError(f"{file}: expected a value for entry {name!r}, found none")
        if kind == "json":
            out[name] = manifest[name]
            continue
        tensor_file = path / f"{name}.safetensors"
        tensors = _load_tensors(tensor_file, device)
        if kind == "optimizer":
            out[name] = _decode(manifest[name], tensors, file, tensor_file)
        elif kind == "tensor":
            out[name] = _pick(tensors, name, tensor_file)
        else:
            out[name] = tensors
    return out


# ----------------------------------------------------------------- saving
def _split(name: str, value):
    """(kind, tensors or None, JSON value or None) of one state entry."""
    if isinstance(value, nn.Module):
        return "module", unwrap(value).state_dict(), None
    if isinstance(value, torch.optim.Optimizer):
        value = value.state_dict()
    if isinstance(value, torch.Tensor):
        return "tensor", {name: value}, None
    if isinstance(value, Mapping) and set(value) == {"state", "param_groups"}:
        tensors = {}
        return "optimizer", tensors, _encode(name, value, tensors, name)
    if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return "tensors", value, None
    _check_json(name, value, name)
    return "json", None, value


def _tensor_dict(where: str, mapping: Mapping) -> dict[str, torch.Tensor]:
    """mapping's tensors as safetensors takes them: detached, on the CPU, contiguous, no two sharing storage.

    safetensors refuses shared storage (tied weights, views of one tensor): every later sharer is cloned, so
    it loads as its own copy with the same values.
    """
    out, seen = {}, set()
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: expected str keys, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}[{key!r}]: expected a torch.Tensor, got {type(value).__name__}")
        if type(value) not in (torch.Tensor, nn.Parameter) or value.layout != torch.strided:
            raise TypeError(f"{where}[{key!r}]: expected a plain dense tensor, got {type(value).__name__} with "
                            f"layout {value.layout} (gather sharded or sparse state into full tensors first)")
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(pointer)
        out[key] = tensor
    return out


def _encode(where: str, value, tensors: dict, path: str):
    """value (an optimizer state dict) as JSON: tensors go into `tensors` under their path and become
    {"tensor": path}; dicts {"dict": [[key, value], ...]}, tuples {"tuple": [...]}, so int keys and tuples
    come back as they were."""
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ValueError(f"{where}: two tensors at {path!r} (keys 1 and '1' in one dict?)")
        tensors[path] = value
        return {"tensor": path}
    if isinstance(value, Mapping):
        for key in value:
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise TypeError(f"{where}: expected int or str keys, got {key!r} at {path!r}")
        return {"dict": [[k, _encode(where, v, tensors, f"{path}/{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_encode(where, v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if not isinstance(value, JSON_SCALARS):
        raise TypeError(f"{where}: expected tensors and JSON values in the optimizer state, got "
                        f"{type(value).__name__} at {path!r}")
    return value


def _check_json(where: str, value, path: str) -> None:
    """value must be JSON: None, bool, int, float, str, and lists, tuples (saved as lists) and str-keyed dicts."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(where, item, f"{path}[{i}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: expected str keys in a JSON value, got {key!r} in {path}")
            _check_json(where, item, f"{path}[{key!r}]")
    elif not isinstance(value, JSON_SCALARS):
        raise TypeError(f"{where}: expected an nn.Module, an optimizer or its state dict, a Tensor, a dict of "
                        f"str -> Tensor or a JSON value, got {type(value).__name__} at {path}")


def _fsync(path: Path) -> None:
    """Flushes a file's or a directory's entries to disk, so a rename never publishes unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(checkpoint: Path) -> None:
    """Deletes a checkpoint by first renaming it to .tmp-*: a crash midway never leaves half a step-* directory."""
    aside = checkpoint.with_name(f"{TMP_PREFIX}old-{checkpoint.name}")
    os.rename(checkpoint, aside)
    shutil.rmtree(aside)


# ----------------------------------------------------------------- loading
def _checkpoints(directory: Path, first_only: bool = False) -> list[tuple[int, Path]]:
    """(step, path) of the valid checkpoints in a run directory, by increasing step; with first_only, only
    the newest (the manifests of older ones are not read)."""
    if not directory.is_dir():
        return []
    found = sorted(((int(m.group(1)), p) for p in directory.iterdir()
                    if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir()), reverse=True)
    valid = []
    for step, path in found:
        try:
            _read_manifest(path)
        except (OSError, ValueError):
            continue
        valid.append((step, path))
        if first_only:
            break
    return valid[::-1]


def _read_manifest(path: Path) -> dict:
    """checkpoint.json of a checkpoint directory, checked for the format marker."""
    file = path / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; expected the manifest of an mcm_fast checkpoint")
    try:
        manifest = json.loads(file.read_bytes())
    except ValueError as error:
        raise ValueError(f"{file}: malformed JSON ({error}); expected the manifest of an mcm_fast checkpoint") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        marker = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ValueError(f"{file}: expected format {FORMAT!r}, got {marker!r}")
    return manifest


def _resolve(path: Path) -> Path:
    """The checkpoint directory itself, or the latest checkpoint when path is a run directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a run directory or a step-* checkpoint directory, found none")
    if (path / MANIFEST).exists() or STEP_DIR.fullmatch(path.name):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f"; found {', '.join(pickles)}, which is never unpickled" if pickles else ""
        raise FileNotFoundError(f"{path}: no checkpoint; expected step-*/{MANIFEST} with .safetensors files{found}")
    return latest


def _load_tensors(file: Path, device) -> dict[str, torch.Tensor]:
    """The tensors of one .safetensors file on device."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; expected the tensors of entry {file.stem!r}")
    try:
        return load_file(file, device=str(device))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{file}: corrupt ({error}); expected a complete safetensors file") from None


def _pick(tensors: dict, key: str, file: Path) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"{file}: expected a tensor {key!r}, not in the file")
    return tensors[key]


def _decode(node, tensors: dict, file: Path, tensor_file: Path):
    """The inverse of _encode: JSON nodes back to dicts (with their int keys), tuples and tensors."""
    if isinstance(node, list):
        return [_decode(v, tensors, file, tensor_file) for v in node]
    if not isinstance(node, dict):
        return node
    tag, body = next(iter(node.items())) if len(node) == 1 else (None, None)
    valid = {"tensor": isinstance(body, str), "tuple": isinstance(body, list),
             "dict": isinstance(body, list) and all(isinstance(p, list) and len(p) == 2
                                                   and isinstance(p[0], (int, str)) for p in body)}
    if not valid.get(tag):
        raise ValueError(f"{file}: expected {{'tensor' | 'dict' | 'tuple': ...}} in the optimizer state, got {node!r}")
    if tag == "tensor":
        return _pick(tensors, body, tensor_file)
    if tag == "tuple":
        return tuple(_decode(v, tensors, file, tensor_file) for v in body)
    return {key: _decode(v, tensors, file, tensor_file) for key, v in body}
