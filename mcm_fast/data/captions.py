"""Captioned images, the source of a text-to-image data set (issue 34), read once to be encoded into latents.

A folder holds images and metadata.jsonl, one {"file_name": "...", "text": "..."} per line (the layout that
diffusers' text-to-image scripts and Hugging Face's imagefolder read), read a batch at a time (ImageFiles: a folder
larger than memory encodes); an .npz holds images under "x" (as
load_npz reads them) and their captions under "text", a NumPy string array (read without unpickling); "mnist"
is the shipped digits captioned "a handwritten digit seven".
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from mcm_fast.data.images import (
    DAMAGE,
    ImageData,
    images_from_array,
    load_mnist,
    read_image,
    read_key,
    stack_images,
)
from mcm_fast.data.latents import file_sha256

METADATA = "metadata.jsonl"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_PROMPTS = tuple(f"a handwritten digit {name}" for name in DIGITS)  # the caption of MNIST's class k


class ImageFiles:
    """A folder's images, read when a batch asks for them: len, shape and batch(indices) -> {"x": float32 [b, C, r,
    r] in [-1, 1]} as ImageData gives them, center-cropped and resized to r; C = 1 reads every image as grayscale,
    3 as RGB (grayscale repeated)."""

    def __init__(self, files: list[Path], resolution: int, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
        self.files, self.resolution, self.channels = files, resolution, channels

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.resolution, self.resolution

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        from PIL import Image

        arrays = [read_image(self.files[int(i)], self.resolution) for i in indices]
        if self.channels == 1:  # luminance, as PIL converts RGB to L
            arrays = [a if a.ndim == 2 else np.asarray(Image.fromarray(a).convert("L")) for a in arrays]
        x = stack_images(arrays if self.channels == 1 else [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
                                                            for a in arrays])
        return {"x": x.float().div_(127.5).sub_(1)}

    def fingerprint(self) -> bytes:
        """What the images are: each file's name and sha256, the resolution and the channels (streamed)."""
        digest = hashlib.sha256(f"{self.resolution} {self.channels}".encode())
        for file in self.files:
            digest.update(f"{file.name} {file_sha256(file)}".encode())
        return digest.digest()


def load_captioned(source: str | Path, resolution: int | None = None, split: str = "train", channels: int = 3
                   ) -> tuple[ImageData | ImageFiles, list[str]]:
    """(images, one caption per image) of a folder with metadata.jsonl (ImageFiles of `channels`, read per
    batch), an .npz with x and text, or "mnist" (its split at resolution); folder images are center-cropped and
    resized to resolution, npz ones must have it."""
    if source == "mnist":
        data = load_mnist(split, 32 if resolution is None else resolution)
        return data, [DIGIT_PROMPTS[int(k)] for k in data.labels]
    path = Path(source)
    if path.is_dir():
        if resolution is None:
            raise ValueError("resolution: a folder's images are resized to it; expected an int, got None")
        return _folder(path, resolution, channels)
    if path.suffix == ".npz" and path.is_file():
        return _npz(path, resolution)
    raise FileNotFoundError(f"data: {str(path)!r} is neither a folder with {METADATA}, an existing .npz file nor "
                            f"'mnist'")


def _folder(root: Path, resolution: int, channels: int) -> tuple[ImageFiles, list[str]]:
    metadata = root / METADATA
    if not metadata.is_file():
        raise FileNotFoundError(f"data: no {metadata}; expected one line {{\"file_name\": ..., \"text\": ...}} per "
                                f"image")
    files, captions = [], []
    for number, line in enumerate(metadata.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{metadata}:{number}: not JSON ({error.msg})") from None
        if not (isinstance(entry, dict) and isinstance(entry.get("file_name"), str)
                and isinstance(entry.get("text"), str)):
            raise ValueError(f"{metadata}:{number}: expected {{\"file_name\": str, \"text\": str}}, got {line:.80}")
        file = (root / entry["file_name"]).resolve()
        if not file.is_relative_to(root.resolve()) or not file.is_file():
            raise ValueError(f"{metadata}:{number}: file_name {entry['file_name']!r} is not an image inside {root}")
        files.append(file)
        captions.append(entry["text"])
    if not files:
        raise ValueError(f"{metadata}: lists no images")
    return ImageFiles(files, resolution, channels), captions


def _npz(file: Path, resolution: int | None) -> tuple[ImageData, list[str]]:
    try:
        archive = np.load(file, allow_pickle=False)
    except DAMAGE as error:
        raise ValueError(f"{file}: not a readable .npz archive ({error})") from None
    with archive:
        missing = [key for key in ("x", "text") if key not in archive.files]
        if missing:
            raise ValueError(f"{file}: no key {missing[0]!r}; expected images 'x' and captions 'text', found "
                             f"{sorted(archive.files)}")
        images = images_from_array(read_key(archive, file, "x"), file, "x")
        text = read_key(archive, file, "text")
    if text.dtype.kind != "U" or text.shape != (len(images),):
        raise ValueError(f"{file}: key 'text': expected {len(images)} captions, a NumPy string array [N] like 'x', "
                         f"got {text.dtype} {text.shape}")
    if resolution is not None and tuple(images.shape[2:]) != (resolution, resolution):
        raise ValueError(f"resolution: the npz images in {str(file)!r} are {images.shape[2]}x{images.shape[3]} and "
                         f"are not resized; expected None or their size, got {resolution!r}")
    return ImageData(images), [str(caption) for caption in text]
