"""Latent text-to-image data (issue 34): captioned images encoded once through a pipeline's VAE and text encoder into a
cache that training reads, so that no image passes the VAE inside a training step. encode_latents writes
DIR/latents.safetensors ("latents" [N, c, h, w], "prompt_embeds" [N, L, D] and, for a network that also takes pooled
embeddings (SDXL's, SD3's), "pooled_prompt_embeds" [N, P], and SDXL's "time_ids" [N, 6]), DIR/null.safetensors (the
same embeddings of the null prompt, "null_" before their names: classifier-free guidance's null condition, which
sampling a trained model reads alone) and DIR/manifest.json (the source's and the encoder's sha256, the seed, the
pipeline folder, the files' sha256). It encodes CHUNK examples at a time into DIR/parts/, each part written
atomically with its own sha256, so that a killed encoding resumes where it stopped and gives the same bytes as one
that never stopped: each part's VAE sample draws from a generator seeded by (seed, part); the parts are then joined
into the cache a tensor and a part at a time. load_latents verifies the sha256 and maps the file rather than reading
it (safetensors' layout, no pickle): a batch reads its examples' pages, and the processes of a multi-GPU run share
one copy in the page cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from mcm_fast._checks import check_int
from mcm_fast.tensor_files import header, mapped, write_tensors

CACHE, NULL, MANIFEST, PARTS = "latents.safetensors", "null.safetensors", "manifest.json", "parts"
FORMAT = "mcm_fast latents 1"
CHUNK = 256  # examples per part
REPORT_EVERY = 16  # parts between echoed progress lines
SEED_STRIDE = 1_000_003  # part k of seed s draws its VAE samples from s * SEED_STRIDE + k


CONDITIONS = {"encoder_hidden_states": "prompt_embeds", "pooled_projections": "pooled_prompt_embeds",
              "time_ids": "time_ids"}  # the network's text (and SDXL's size) inputs -> the cache's keys


class LatentData:
    """Cached latents with their prompt embeddings: the trainer reads len, shape, num_classes (0: the condition is
    text) and batch(indices) -> {"x": latents, "encoder_hidden_states": prompt embeddings [B, L, D] (and
    "pooled_projections" [B, P] where the network takes them)}; null_cond holds the empty prompt's (one example
    each), the null condition of label dropout and classifier-free guidance. The tensors may be views of the mapped
    cache file: a subset keeps indices into them (index), and a batch reads its own examples only."""

    def __init__(self, latents: torch.Tensor, cond: dict[str, torch.Tensor], null_cond: dict[str, torch.Tensor],
                 manifest: dict, index: torch.Tensor | None = None):
        self.latents, self.cond, self.null_cond, self.manifest = latents, cond, null_cond, manifest
        self.index = torch.arange(len(latents)) if index is None else index
        self.num_classes = 0

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(c, h, w) of one latent."""
        return tuple(self.latents.shape[1:])

    @property
    def text_info(self) -> dict[str, list | int]:
        """{"text": [L, D] of the prompt embeddings, and "pooled": P where there are pooled ones}."""
        info = {"text": list(self.cond["encoder_hidden_states"].shape[1:])}
        if "pooled_projections" in self.cond:
            info["pooled"] = self.cond["pooled_projections"].shape[1]
        return info

    def prompts(self, n: int) -> dict[str, torch.Tensor]:
        """The first n examples' conditions."""
        return {k: v for k, v in self.batch(torch.arange(min(n, len(self)))).items() if k != "x"}

    def subset(self, indices: torch.Tensor) -> LatentData:
        """The examples at indices (a LongTensor), with the same null prompt and manifest; nothing is copied."""
        return LatentData(self.latents, self.cond, self.null_cond, self.manifest, self.index[indices])

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = self.index[indices]
        return {"x": self.latents[rows], **{k: v[rows] for k, v in self.cond.items()}}


def source_digest(images, captions: list[str]) -> str:
    """sha256 of the images (their bytes, dtype and shape; a folder's ImageFiles: its fingerprint, the files'
    sha256) and of the captions: what a cache was encoded from."""
    if hasattr(images, "fingerprint"):
        digest = hashlib.sha256(images.fingerprint())
    else:
        digest = hashlib.sha256(f"{images.images.dtype} {tuple(images.images.shape)}".encode())
        digest.update(images.images.contiguous().numpy().tobytes())
    digest.update(json.dumps(captions).encode())
    return digest.hexdigest()


def encode_latents(images, captions: list[str], parts, out: str | Path, seed: int = 0,
                   batch_size: int = 64, echo=None, source: str | None = None) -> Path:
    """Encodes images (an ImageData) and captions through parts (integrations.text_to_image.TextToImageParts)
    into the cache out/; resumes a killed encoding of the same source, parts and seed, and refuses to mix others
    into it.
    source: what the images are, for the manifest ("mnist": scored in FD-MNIST features once decoded)."""
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    if len(captions) != len(images):
        raise ValueError(f"captions: expected one per image ({len(images)}), got {len(captions)}")
    channels, side = parts.image_shape
    if images.shape != (channels, side, side):
        raise ValueError(f"images: the VAE takes [{channels}, {side}, {side}] images, got {list(images.shape)}")
    out = Path(out)
    identity = {"format": FORMAT, "source_sha256": source_digest(images, captions), "encoder": parts.identity,
                "seed": seed, "chunk": CHUNK, "n": len(images)}
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text())
        if {k: manifest.get(k) for k in identity} != identity:
            raise ValueError(f"out: {out} holds latents of another source, encoder or seed; expected a new folder")
        return out
    _check_parts_of(out, identity)
    for k, start in enumerate(range(0, len(images), CHUNK)):
        part = out / PARTS / f"{k:05d}.safetensors"
        if part.is_file() and _verified(part):
            continue
        generator = torch.Generator(parts.device).manual_seed(seed * SEED_STRIDE + k)
        chunk = range(start, min(start + CHUNK, len(images)))
        latents, embeds = [], []
        for i in range(chunk.start, chunk.stop, batch_size):
            index = torch.arange(i, min(i + batch_size, chunk.stop))
            latents.append(parts.encode_images(images.batch(index)["x"], generator).cpu())
            embeds.append({**parts.encode_prompts([captions[j] for j in index]),
                           **parts.image_conditions(side, len(index))})
        _write_verified(part, {"latents": torch.cat(latents), **{CONDITIONS[k]: torch.cat([e[k].cpu() for e in embeds])
                                                                 for k in embeds[0]}})
        if echo and (k % REPORT_EVERY == 0 or chunk.stop == len(images)):
            echo(f"encoded {chunk.stop} of {len(images)}")
    return _assemble(out, identity, {k: v.cpu() for k, v in parts.null_cond().items()},
                     {"pipeline": str(Path(parts.folder).resolve()), "source": source})


def load_latents(directory: str | Path) -> LatentData:
    """The cache encode_latents wrote, its sha256 verified; safetensors only."""
    manifest = read_manifest(directory)
    tensors = _verified_file(Path(directory), CACHE, manifest)
    cond = {k: tensors[name] for k, name in CONDITIONS.items() if name in tensors}
    return LatentData(tensors["latents"], cond, load_null_cond(directory), manifest)


def read_manifest(directory: str | Path) -> dict:
    """A cache's manifest.json: its format, identity, pipeline folder, shapes and files' sha256."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"data: no {path}; expected a latent cache (mcm-fast encode)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT!r}, got {manifest.get('format')!r}")
    return manifest


def load_null_cond(directory: str | Path) -> dict[str, torch.Tensor]:
    """{"encoder_hidden_states": the empty prompt's embedding [1, L, D] (and "pooled_projections" [1, P])} of a
    cache, verified, read alone (what sampling a model trained on it needs of it)."""
    tensors = _verified_file(Path(directory), NULL, read_manifest(directory))
    return {k: tensors[f"null_{name}"] for k, name in CONDITIONS.items() if f"null_{name}" in tensors}


def _verified_file(directory: Path, name: str, manifest: dict) -> dict[str, torch.Tensor]:
    path = directory / name
    if not path.is_file() or file_sha256(path) != manifest.get("sha256", {}).get(name):
        raise ValueError(f"{path}: missing or damaged (its sha256 differs from {directory / MANIFEST}'s); encode "
                         f"again")
    return mapped(path)


def _check_parts_of(out: Path, identity: dict) -> None:
    """Parts already in out/parts must be of this identity (recorded in parts/identity.json)."""
    recorded = out / PARTS / "identity.json"
    if recorded.is_file():
        if json.loads(recorded.read_text()) != identity:
            raise ValueError(f"out: {out} holds a partial encoding of another source, encoder or seed; expected a "
                             f"new folder")
        return
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    _write_atomic(recorded, json.dumps(identity, indent=1).encode())


def _assemble(out: Path, identity: dict, null_cond: dict[str, torch.Tensor], origin: dict) -> Path:
    """The parts joined into the cache and its manifest (written last: a cache without one is unfinished)."""
    parts = sorted((out / PARTS).glob("*.safetensors"))
    n = _join(parts, out / CACHE)
    if n != identity["n"]:
        raise ValueError(f"out: {out / PARTS} holds {n} examples, expected {identity['n']}")
    null = {f"null_{CONDITIONS[k]}": v.contiguous() for k, v in null_cond.items()}
    partial = out / f".{NULL}.tmp"
    write_tensors(partial, null)
    os.replace(partial, out / NULL)
    joined = mapped(out / CACHE)
    manifest = {**identity, **origin, "shape": list(joined["latents"].shape[1:]),
                "prompt_shape": list(joined["prompt_embeds"].shape[1:]),
                "sha256": {name: file_sha256(out / name) for name in (CACHE, NULL)}}
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    shutil.rmtree(out / PARTS)
    return out


def _join(parts: list[Path], path: Path) -> int:
    """Writes the parts' tensors concatenated along the first dimension as one safetensors file (atomically), a
    tensor and a part at a time, so that a cache larger than memory joins; returns its examples."""
    tensors = [mapped(part) for part in parts]
    keys = sorted(tensors[0], key=lambda k: (-tensors[0][k].dtype.itemsize, k))  # aligned, as write_tensors lays out
    first = header({k: (tensors[0][k].dtype, [sum(len(t[k]) for t in tensors), *tensors[0][k].shape[1:]])
                    for k in keys})
    partial = path.with_name(f".{path.name}.tmp")
    with open(partial, "wb") as file:
        file.write(first)
        for key in keys:
            for part in tensors:
                file.write(part[key].contiguous().view(-1).view(torch.uint8).numpy())
    os.replace(partial, path)
    return sum(len(t["latents"]) for t in tensors)


def _write_verified(path: Path, tensors: dict) -> None:
    """tensors as path (safetensors), atomically, with its sha256 beside it in path.sha256."""
    partial = path.with_suffix(".tmp")
    digest = write_tensors(partial, tensors)
    os.replace(partial, path)
    _write_atomic(path.with_suffix(".sha256"), digest.encode())


def _verified(path: Path) -> bool:
    digest = path.with_suffix(".sha256")
    return digest.is_file() and digest.read_text() == file_sha256(path)


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
