"""Checkpoints: safetensors files for tensors and one checkpoint.json for everything else, written atomically
and loaded without unpickling anything (a checkpoint from elsewhere runs no code).

A run directory holds one subdirectory per checkpoint:

    step-000001000/
        checkpoint.json      {"format": "mcm_fast.checkpoint", "version": 2, "step": 1000,
                              "entries": {"model": "module", "ema": "module", "optimizer": "optimizer", ...},
                              "optimizer": <its param_groups and non-tensor state>, "config": {...}, ...,
                              "sha256": {"model.safetensors": <hex>, ...}, "checksum": <sha256 of the rest>}
        model.safetensors    one file per module, optimizer, tensor dict or tensor entry
        ema.safetensors, optimizer.safetensors, ...

A save writes a .tmp-* directory, fsyncs it and renames it to step-*: a crash at any moment leaves the earlier
checkpoints intact and at most a stray .tmp-* directory, which loading ignores and the next save removes.
Loading verifies every checksum and refuses files that are symlinks leading out of the run directory; a run
directory loads its newest checkpoint that verifies, warning about (and never touching) damaged newer ones.
Version 1 checkpoints (written before checksums) still load, unverified.
One process (rank 0) writes to a run directory at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mcm_fast._checks import check_int
from mcm_fast.tensor_files import read_tensors, write_tensors
from mcm_fast.train.distributed import unwrap

FORMAT = "mcm_fast.checkpoint"
VERSION = 2
VERSIONS = (1, 2)  # readable; version 1 has no checksums
MANIFEST = "checkpoint.json"
TMP_PREFIX = ".tmp-"
STEP_DIR = re.compile(r"step-(\d+)")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = ("format", "version", "step", "entries", "sha256", "checksum", "path")
ENTRY_TYPES = ("module", "tensors", "optimizer", "tensor", "json")
JSON_SCALARS = (type(None), bool, int, float, str)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint of a run directory failed to load or verify and was skipped (and left as it is)."""


def save_checkpoint(directory, model, *, step: int, keep: int | None = 3, **state) -> Path:
    """Writes model and state as checkpoint step-{step:09d} of the run directory; returns its path.

    state values: nn.Modules (saved as state dicts), optimizers or their state dicts, dicts of str -> Tensor,
    Tensors, or JSON values. A NaN or inf in any floating-point tensor is an error and nothing is written. The
    newest `keep` checkpoints with a readable manifest stay (None keeps all), always the one just written; others
    are never removed. An existing copy of this step is replaced if it verifies, else kept as step-*.damaged.
    """
    check_int("step", step, 0)
    if keep is not None:
        check_int("keep", keep, 1)
    if not isinstance(model, (nn.Module, Mapping)):
        raise TypeError(f"model: expected an nn.Module or its state dict, got {type(model).__name__}")
    step, directory = int(step), _directory("directory", directory)
    target = _publish(directory, f"step-{step:09d}", *_pack(model, step, state))
    if keep is not None:
        for _, old in _checkpoints(directory)[:-keep]:
            if old != target:
                _remove(old)
    return target


def _pack(model, step: int, state: dict) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(manifest, {file name: its tensors}) of a checkpoint; refuses a non-finite tensor."""
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
    for name, tensors in files.items():
        _check_finite(step, name, tensors)
    return manifest, {f"{name}.safetensors": tensors for name, tensors in files.items()}


def _publish(directory: Path, name: str, manifest: dict, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Writes a checkpoint atomically as directory/name: its tensor files a tensor at a time (no copy of the
    whole in memory), then the manifest with their sha256 and its checksum, into a temporary directory, synced,
    then renamed over any old copy (set aside first, removed after); strays of a crashed save go first."""
    directory.mkdir(parents=True, exist_ok=True)
    for stray in directory.glob(TMP_PREFIX + "*"):  # left by a save that crashed
        if stray.is_dir() and not stray.is_symlink():
            shutil.rmtree(stray)
    target, tmp = directory / name, directory / f"{TMP_PREFIX}{name}"
    tmp.mkdir()
    manifest = {**manifest, "sha256": {file: write_tensors(tmp / file, tensors) for file, tensors in files.items()}}
    manifest["checksum"] = _checksum(manifest)
    _write(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    _fsync(tmp)
    aside = directory / f"{TMP_PREFIX}old-{name}"
    if target.exists() or target.is_symlink():
        _set_aside(target, aside, directory)
    os.rename(tmp, target)
    _fsync(directory)
    if aside.exists():
        shutil.rmtree(aside)
    return target


def latest_checkpoint(directory) -> Path | None:
    """The step-* checkpoint of a run directory with the highest step and a valid checkpoint.json, or None.

    Stray .tmp-* directories and step-* directories without a readable manifest are not checkpoints.
    """
    checkpoints = _checkpoints(Path(directory), first_only=True)
    return checkpoints[-1][1] if checkpoints else None


def has_checkpoints(directory) -> bool:
    """Whether a run directory holds any step-* directory, complete or damaged: a run that must resume, not restart."""
    return bool(_step_dirs(Path(directory)))


def load_checkpoint(path, device: str | torch.device = "cpu") -> dict:
    """{"step": int, "path": its directory, "model": state dict, and each saved entry} of a step-* directory,
    or of a run directory's newest checkpoint that loads and verifies.

    Damaged newer checkpoints of a run directory are skipped with a DamagedCheckpointWarning naming them and
    left as they are; when none verifies, the error names the newest. Tensors load onto device; optimizer
    state dicts as load_state_dict expects them.
    """
    path = _directory("path", path)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a run directory or a step-* checkpoint directory, found none")
    if (path / MANIFEST).exists() or STEP_DIR.fullmatch(path.name):
        return _load(path, path.parent, device)
    found = [p for _, p in _step_dirs(path)]
    if not found:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f"; found {', '.join(pickles)}, which is never unpickled" if pickles else ""
        raise FileNotFoundError(f"{path}: no checkpoint; expected step-*/{MANIFEST} with .safetensors files{hint}")
    damaged = []
    for checkpoint in reversed(found):
        try:
            state = _load(checkpoint, path, device)
        except (OSError, ValueError) as error:
            damaged.append(error)
            continue
        for error in damaged:
            warnings.warn(f"{error} (skipped; loading {checkpoint.name})", DamagedCheckpointWarning, stacklevel=2)
        return state
    raise ValueError(f"{damaged[0]} (and no older checkpoint of {path} verifies: {len(found)} tried)")


def check_state_dict(where: str, state: Mapping, module: nn.Module, only: set | None = None) -> None:
    """state must hold exactly module's tensors (or those named in only) with their shapes and dtypes (where: the
    file, for messages).

    Checked before load_state_dict, which would fail midway with a long message or silently cast dtypes.
    """
    expected = {k: v for k, v in unwrap(module).state_dict().items() if only is None or k in only}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{where}: expected the tensors of the model; missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]} ({len(missing)} and {len(unexpected)} in all)")
    for key, value in expected.items():
        got = state[key]
        if got.shape != value.shape or got.dtype != value.dtype:
            raise ValueError(f"{where}: tensor {key!r}: expected {value.dtype} {tuple(value.shape)}, "
                             f"got {got.dtype} {tuple(got.shape)}")


# ----------------------------------------------------------------- saving
def _directory(name: str, value) -> Path:
    """value as a Path: a str or os.PathLike that is not an existing file."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a directory path (str or os.PathLike), got {type(value).__name__}")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: {path} is a file; expected a run directory or a checkpoint directory")
    return path


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
    """mapping's tensors, checked to be plain dense ones (each is written as its own bytes: tied weights and
    views of one tensor load as copies with the same values)."""
    out = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: expected str keys, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}[{key!r}]: expected a torch.Tensor, got {type(value).__name__}")
        if type(value) not in (torch.Tensor, nn.Parameter) or value.layout != torch.strided:
            raise TypeError(f"{where}[{key!r}]: expected a plain dense tensor, got {type(value).__name__} with "
                            f"layout {value.layout} (gather sharded or sparse state into full tensors first)")
        out[key] = value.detach()
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


def _check_finite(step: int, name: str, tensors: Mapping) -> None:
    """Saved tensors must be finite: a checkpoint of NaN or inf weights would resume into a broken run."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"step {step}: {name}[{key!r}] holds non-finite values; no checkpoint written")


def _checksum(manifest: dict) -> str:
    """sha256 of the manifest without its "checksum" key, in a canonical JSON form."""
    rest = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _write(file: Path, data: bytes) -> None:
    """Writes data to a new file and fsyncs it, so a rename never publishes unwritten data."""
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _set_aside(target: Path, aside: Path, directory: Path) -> None:
    """Moves an existing copy of the step being saved out of the way: one that verifies to `aside` (deleted once
    the new one is in place), a damaged one to a kept step-*.damaged name, with a warning."""
    try:
        _load(target, directory, "cpu")
    except (OSError, ValueError) as error:
        kept, n = target.with_name(f"{target.name}.damaged"), 1
        while kept.exists() or kept.is_symlink():
            n += 1
            kept = target.with_name(f"{target.name}.damaged-{n}")
        os.rename(target, kept)
        warnings.warn(f"{error} (kept as {kept.name})", DamagedCheckpointWarning, stacklevel=3)
        return
    os.rename(target, aside)


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
def _step_dirs(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-* directory of a run directory (valid or not), by increasing step."""
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir())


def _checkpoints(directory: Path, first_only: bool = False) -> list[tuple[int, Path]]:
    """(step, path) of the step-* directories with a readable manifest, by increasing step; with first_only,
    only the newest (the manifests of older ones are not read)."""
    valid = []
    for step, path in reversed(_step_dirs(directory)):
        try:
            _read_manifest(path, directory)
        except (OSError, ValueError):
            continue
        valid.append((step, path))
        if first_only:
            break
    return valid[::-1]


def _load(path: Path, root: Path, device) -> dict:
    """The entries of one checkpoint directory of run directory root, every file verified against its checksum."""
    manifest = _read_manifest(path, root)
    file = path / MANIFEST
    version, step, entries = manifest.get("version"), manifest.get("step"), manifest.get("entries")
    if version not in VERSIONS:
        raise ValueError(f"{file}: expected version {VERSION}, got {version!r}")
    sealed = version != 1 or "checksum" in manifest  # a bit flipped from 2 to 1 must not skip the checks
    if sealed and manifest.get("checksum") != _checksum(manifest):
        raise ValueError(f"{file}: its checksum does not match its content; the manifest is damaged or was edited")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{file}: expected 'step' an integer >= 0, got {step!r}")
    if not (isinstance(entries, dict) and "model" in entries and all(
            isinstance(n, str) and NAME.fullmatch(n) and k in ENTRY_TYPES for n, k in entries.items())):
        raise ValueError(f"{file}: expected 'entries' mapping 'model' and other names to one of {ENTRY_TYPES}, "
                         f"got {entries!r}")
    sums = manifest.get("sha256") if sealed else None
    out = {"step": step, "path": path}
    for name, kind in entries.items():
        if kind in ("json", "optimizer") and name not in manifest:
            raise ValueError(f"{file}: expected a value for entry {name!r}, found none")
        if kind == "json":
            out[name] = manifest[name]
            continue
        tensor_file = path / f"{name}.safetensors"
        tensors = _load_tensors(tensor_file, root, sums, device)
        if kind == "optimizer":
            out[name] = _decode(manifest[name], tensors, file, tensor_file)
        elif kind == "tensor":
            out[name] = _pick(tensors, name, tensor_file)
        else:
            out[name] = tensors
    return out


def _own(file: Path, root: Path, what: str) -> Path:
    """file, a file of run directory root; a symlink that leads out of it is refused (self-contained)."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; expected {what}")
    real = file.resolve()
    if not real.is_relative_to(root.resolve()):
        raise ValueError(f"{file}: a symlink to {real}, outside the run directory {root}; expected the run "
                         f"directory to hold its own files")
    return file


def _read_manifest(path: Path, root: Path) -> dict:
    """checkpoint.json of a checkpoint directory, checked for the format marker."""
    file = path / MANIFEST
    data = _own(file, root, "the manifest of an mcm_fast checkpoint").read_bytes()
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{file}: malformed JSON ({error}); expected the manifest of an mcm_fast checkpoint") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        marker = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{file}: expected format {FORMAT!r}, got {marker!r}")
    return manifest


def _load_tensors(file: Path, root: Path, sums, device) -> dict[str, torch.Tensor]:
    """The tensors of one .safetensors file on device, checked against its sha256 in sums (None: version 1)."""
    _own(file, root, f"the tensors of entry {file.stem!r}")
    expected = None
    if sums is not None:
        expected = sums.get(file.name) if isinstance(sums, dict) else None
        if not isinstance(expected, str):
            raise ValueError(f"{file}: no sha256 recorded in {MANIFEST}; expected one for every tensor file")
    try:
        tensors = read_tensors(file, expected)
    except OSError as error:
        raise ValueError(f"{file}: unreadable ({error}); expected a complete safetensors file") from None
    return {key: tensors[key].to(device) for key in sorted(tensors)}  # one order in every process (collectives)


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
