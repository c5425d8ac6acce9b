"""safetensors files written a tensor at a time and read with no second copy: the format of checkpoints and latent
caches. A file is an 8-byte little-endian header length, a JSON header ({name: {"dtype", "shape", "data_offsets":
[begin, end]}}, optionally "__metadata__"), spaces up to an 8-byte boundary, then the tensors' bytes back to back.

The safetensors library's save() builds the whole file in memory, and its load() takes the file's bytes and copies
them again: a 0.2B-parameter run (network, EMA, AdamW's moments) needed about 4 GiB beyond its own memory at
every save (docs/results.md, "What a LoRA student saves in memory"). Here a save copies one tensor at a time to
the CPU and writes it (hashing as it goes), and a load reads the file once into a buffer whose tensors are views
of it. Files are those the library reads and writes; no code is executed on load, and a malformed header is an
error naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}  # safetensors' names
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100_000_000  # bytes, as the safetensors library allows


def header(specs: Mapping[str, tuple[torch.dtype, list[int]]]) -> bytes:
    """A file's first bytes (length, JSON header, padding) for tensors of these (dtype, shape), laid out back to
    back in the order given."""
    entries, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        if dtype not in NAMES:
            raise TypeError(f"{name}: dtype {dtype} has no safetensors name; expected one of {tuple(NAMES)}")
        size = math.prod(shape) * dtype.itemsize
        entries[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text


def write_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> str:
    """Writes tensors (any device, layout-strided) as a safetensors file, one tensor copied to the CPU at a time,
    and fsyncs it; returns the file's sha256. Wider dtypes go first, so every tensor starts aligned to its
    element size (a load then views the bytes as they are)."""
    order = sorted(tensors, key=lambda name: (-tensors[name].dtype.itemsize, name))
    first = header({name: (tensors[name].dtype, list(tensors[name].shape)) for name in order})
    digest = hashlib.sha256(first)
    with open(path, "wb") as file:
        file.write(first)
        for name in order:
            data = tensors[name].detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            digest.update(data)
            file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return digest.hexdigest()


def _entries(buffer, where: str) -> tuple[int, dict]:
    """(the data's start, the validated header entries) of a safetensors file's bytes."""
    def corrupt(reason: str):
        return ValueError(f"{where}: corrupt ({reason}); expected a complete safetensors file")

    if len(buffer) < 8:
        raise corrupt("shorter than its 8-byte header length")
    size = int.from_bytes(bytes(buffer[:8]), "little")
    if size > min(MAX_HEADER, len(buffer) - 8):
        raise corrupt(f"a header of {size} bytes in a file of {len(buffer)}")
    try:
        entries = json.loads(bytes(buffer[8:8 + size]))
    except (ValueError, RecursionError) as error:
        raise corrupt(f"its header is not JSON: {error}") from None
    if not isinstance(entries, dict):
        raise corrupt("its header is not a JSON object")
    metadata = entries.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise corrupt("__metadata__ is not a map of strings")
    spans = []
    for name, spec in entries.items():
        valid = isinstance(spec, dict) and spec.get("dtype") in DTYPES and isinstance(spec.get("shape"), list) \
            and all(type(n) is int and n >= 0 for n in spec["shape"]) and isinstance(spec.get("data_offsets"), list) \
            and len(spec["data_offsets"]) == 2 and all(type(n) is int for n in spec["data_offsets"])
        if not valid or spec["data_offsets"][1] - spec["data_offsets"][0] != \
                math.prod(spec["shape"]) * DTYPES[spec["dtype"]].itemsize:
            raise corrupt(f"tensor {name!r} has the entry {spec!r}")
        spans.append((*spec["data_offsets"], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise corrupt(f"tensor {name!r} starts at byte {begin}, expected {end}")
        end = stop
    if end != len(buffer) - 8 - size:
        raise corrupt(f"its tensors end at byte {end} of {len(buffer) - 8 - size}")
    return 8 + size, entries


def _views(buffer, start: int, entries: dict) -> dict[str, torch.Tensor]:
    """The tensors of the entries as views of buffer (a copy where one starts unaligned for its dtype)."""
    tensors = {}
    for name, spec in entries.items():
        begin, end = (start + n for n in spec["data_offsets"])
        dtype = DTYPES[spec["dtype"]]
        data = torch.from_numpy(np.frombuffer(buffer, np.uint8, end - begin, begin)) if end > begin else \
            torch.empty(0, dtype=torch.uint8)
        data = data if begin % dtype.itemsize == 0 else data.clone()
        tensors[name] = data.view(dtype).view(spec["shape"])
    return tensors


def read_tensors(path: str | Path, sha256: str | None = None, where: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, read once into memory that they view; with sha256, the file's bytes are
    checked against it first (ValueError naming `where`, the path by default, when they differ)."""
    where = where or str(path)
    with open(path, "rb") as file:
        buffer = bytearray(os.fstat(file.fileno()).st_size)
        file.readinto(buffer)
    if sha256 is not None and hashlib.sha256(buffer).hexdigest() != sha256:
        raise ValueError(f"{where}: damaged; its sha256 differs from the one recorded for it")
    return _views(buffer, *_entries(buffer, where))


def mapped(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of the file mapped copy-on-write (np.memmap): nothing is read
    until used, and processes that map one file share its pages."""
    buffer = np.memmap(path, dtype=np.uint8, mode="c")
    return _views(buffer, *_entries(buffer, str(path)))
