"""Latent text-to-image data (issue 34): captioned images encoded once through a pipeline's VAE and text encoder
into a cache that training reads, so that no image passes the VAE inside a training step.

encode_latents writes DIR/latents.safetensors ("latents" [N, c, h, w], "prompt_embeds" [N, L, D] and, for a
network that also takes pooled embeddings (SD3's), "pooled_prompt_embeds" [N, P]), DIR/null.safetensors (the same
embeddings of the empty prompt, "null_" before their names: classifier-free guidance's null condition, which
sampling a trained model reads alone) and DIR/manifest.json (the source's and the encoder's
sha256, the seed, the pipeline folder, the files' sha256). It encodes CHUNK
examples at a time into DIR/parts/, each part written atomically with its own sha256, so that a killed encoding
resumes where it stopped and gives the same bytes as one that never stopped: each part's VAE sample draws from
a generator seeded by (seed, part). load_latents verifies the sha256 and reads safetensors only (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mcm_fast._checks import check_int

CACHE, NULL, MANIFEST, PARTS = "latents.safetensors", "null.safetensors", "manifest.json", "parts"
FORMAT = "mcm_fast latents 1"
CHUNK = 256  # examples per part
REPORT_EVERY = 16  # parts between echoed progress lines
SEED_STRIDE = 1_000_003  # part k of seed s draws its VAE samples from s * SEED_STRIDE + k


CONDITIONS = {"encoder_hidden_states": "prompt_embeds", "pooled_projections": "pooled_prompt_embeds"}  # -> file keys


class LatentData:
    """Cached latents with their prompt embeddings: the trainer reads len, shape, num_classes (0: the condition is
    text) and batch(indices) -> {"x": latents, "encoder_hidden_states": prompt embeddings [B, L, D] (and
    "pooled_projections" [B, P] where the network takes them)}; null_cond holds the empty prompt's (one example
    each), the null condition of label dropout and classifier-free guidance."""

    def __init__(self, latents: torch.Tensor, cond: dict[str, torch.Tensor], null_cond: dict[str, torch.Tensor],
                 manifest: dict):
        self.latents, self.cond, self.null_cond, self.manifest = latents, cond, null_cond, manifest
        self.num_classes = 0

    def __len__(self) -> int:
        return len(self.latents)

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
        return {k: v[:n] for k, v in self.cond.items()}

    def subset(self, indices: torch.Tensor) -> LatentData:
        """The examples at indices (a LongTensor), with the same null prompt and manifest."""
        return LatentData(self.latents[indices], {k: v[indices] for k, v in self.cond.items()}, self.null_cond,
                          self.manifest)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.latents[indices], **{k: v[indices] for k, v in self.cond.items()}}


def source_digest(images, captions: list[str]) -> str:
    """sha256 of the images' bytes, dtype and shape and of the captions: what a cache was encoded from."""
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
            embeds.append(parts.encode_prompts([captions[j] for j in index]))
        _write_verified(part, {"latents": torch.cat(latents), **{CONDITIONS[k]: torch.cat([e[k].cpu() for e in embeds])
                                                                 for k in embeds[0]}})
        if echo and (k % REPORT_EVERY == 0 or chunk.stop == len(images)):
            echo(f"encoded {chunk.stop} of {len(images)}")
    return _assemble(out, identity, {k: v.cpu() for k, v in parts.encode_prompts([""]).items()},
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
    return load_file(path)


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
    tensors = [load_file(part) for part in parts]
    joined = {key: torch.cat([t[key] for t in tensors]).contiguous() for key in tensors[0]}
    if len(joined["latents"]) != identity["n"]:
        raise ValueError(f"out: {out / PARTS} holds {len(joined['latents'])} examples, expected {identity['n']}")
    null = {f"null_{CONDITIONS[k]}": v.contiguous() for k, v in null_cond.items()}
    for name, tensors in ((CACHE, joined), (NULL, null)):
        partial = out / f".{name}.tmp"
        save_file(tensors, partial)
        os.replace(partial, out / name)
    manifest = {**identity, **origin, "shape": list(joined["latents"].shape[1:]),
                "prompt_shape": list(joined["prompt_embeds"].shape[1:]),
                "sha256": {name: file_sha256(out / name) for name in (CACHE, NULL)}}
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    shutil.rmtree(out / PARTS)
    return out


def _write_verified(path: Path, tensors: dict) -> None:
    """tensors as path (safetensors), atomically, with its sha256 beside it in path.sha256."""
    partial = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, partial)
    digest = file_sha256(partial)
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
