"""In-memory data sets for training: the shipped MNIST, folders of PNG/JPEG images, .npz arrays (2-D toys: points.py).

Images are kept as uint8 [N, C, H, W] (a quarter of float32's memory) and become float32 in [-1, 1] batch by batch
(v -> v / 127.5 - 1); sources that are float already (npz floats, area-downsampled MNIST) stay float32 in [-1, 1].
`load_dataset` is the one entry point the trainer calls.
"""
from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcm_fast._checks import check_int, describe
from mcm_fast.data.points import TOYS, load_toy

MNIST_FILE = Path(__file__).with_name("mnist.npz")
MNIST_RESOLUTIONS = (32, 28, 16, 8)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAY_MODES = ("1", "L", "LA")
GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I")  # 16-bit grayscale PNGs; Pillow's convert("L") would clip them
MAX_CLASSES = 2**16  # a label is an index into the network's class embedding
DAMAGE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)  # what a damaged archive raises
DATASETS = ("mnist", "folder", "npz", "latents", *TOYS)
# The arguments of load_dataset each kind reads (seed is read by the toys and accepted by all: the trainer always
# passes it). Any other argument away from its default is an error.
USES = {"mnist": ("resolution", "split"), "folder": ("path", "resolution"), "npz": ("path", "resolution", "split"),
        "latents": ("path",), "ring": ("n",), "grid": ("n",)}


class ImageData:
    """Images in memory, uint8 [N, C, H, W] or float32 in [-1, 1], with int64 labels [N] or None.

    uint8 where the source is (a quarter of float32's memory), converted per batch; the trainer reads len, shape,
    num_classes and batch(indices), as for PointData.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None):
        if not (isinstance(images, torch.Tensor) and images.dim() == 4
                and images.dtype in (torch.uint8, torch.float32)):
            raise TypeError(f"images: expected a uint8 or float32 tensor [N, C, H, W], got {describe(images)}")
        if labels is not None and not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
                                       and labels.shape == images.shape[:1]):
            raise ValueError(f"labels: expected int64 [{len(images)}] like images, got {describe(labels)}")
        if num_classes is None:
            num_classes = 0 if labels is None or len(labels) == 0 else int(labels.max()) + 1
        if labels is not None and len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes
                                                       <= MAX_CLASSES):
            raise ValueError(f"labels: expected classes in [0, num_classes) with num_classes <= {MAX_CLASSES}, got "
                             f"[{int(labels.min())}, {int(labels.max())}] and num_classes={num_classes}")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def subset(self, indices: torch.Tensor) -> ImageData:
        """The examples at indices (a LongTensor), with the same classes."""
        return ImageData(self.images[indices], None if self.labels is None else self.labels[indices], self.num_classes)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"x": float32 [b, C, H, W] in [-1, 1]} and, when labeled, "label": int64 [b] for a LongTensor [b]."""
        x = self.images[indices]
        out = {"x": x.float().div_(127.5).sub_(1) if x.dtype == torch.uint8 else x}
        if self.labels is not None:
            out["label"] = self.labels[indices]
        return out


def load_mnist(split: str = "train", resolution: int = 32) -> ImageData:
    """The shipped MNIST digits (1 channel, 10 classes) of split "train" (60,000) or "test" (10,000).

    28 keeps the originals (uint8); 32 zero-pads them by 2 pixels each side (uint8); 16 and 8 are area means over
    2x2 / 4x4 blocks of the padded 32x32 images, computed once here and kept as float32 in [-1, 1] (not rounded).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test' for MNIST, got {split!r}")
    if resolution not in MNIST_RESOLUTIONS:
        allowed = ", ".join(map(str, MNIST_RESOLUTIONS))
        raise ValueError(f"resolution: expected one of {allowed} for MNIST, got {resolution!r}")
    if not MNIST_FILE.is_file():
        raise FileNotFoundError(f"{MNIST_FILE}: the shipped MNIST archive is missing; reinstall mcm_fast")
    with np.load(MNIST_FILE, allow_pickle=False) as archive:
        x = torch.from_numpy(archive[f"x_{split}"])[:, None]  # [N, 1, 28, 28] uint8
        y = torch.from_numpy(archive[f"y_{split}"]).long()
    if resolution != 28:
        x = F.pad(x, (2, 2, 2, 2))  # [N, 1, 32, 32]: the black border is -1
    if resolution < 28:
        x = F.avg_pool2d(x.float(), 32 // resolution).div_(127.5).sub_(1)  # [N, 1, r, r]
    return ImageData(x, y, 10)


def load_image_folder(path: str | Path, resolution: int) -> ImageData:
    """PNG/JPEG files under `path` as a data set: each subfolder (sorted by name) is a class, else unlabeled.

    Each image is center-cropped to a square and resized to resolution x resolution: with Pillow's BOX filter (an
    exact area mean) when its side is a multiple of resolution, else BICUBIC. Grayscale images give 1 channel, all
    others RGB (alpha dropped, palettes expanded); a folder mixing both is all RGB. Hidden entries are skipped.
    """
    check_int("resolution", resolution, 1)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path: {str(root)!r} is not an existing folder")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        stray = _image_files(root)
        if stray:
            raise ValueError(f"path: {str(stray[0])!r} lies beside the class subfolders of {str(root)!r}; "
                             f"move it into a class folder")
        groups = [_image_files(d, recursive=True) for d in classes]
        for folder, files in zip(classes, groups):
            if not files:
                raise ValueError(f"path: class folder {str(folder)!r} holds no PNG/JPEG images")
    else:
        groups = [_image_files(root)]
        if not groups[0]:
            raise ValueError(f"path: {str(root)!r} holds no PNG/JPEG images (and no class subfolders)")
    images = stack_images([read_image(f, resolution) for files in groups for f in files])
    if not classes:
        return ImageData(images)
    labels = torch.cat([torch.full((len(files),), k, dtype=torch.int64) for k, files in enumerate(groups)])
    return ImageData(images, labels, len(classes))


def load_npz(path: str | Path, split: str | None = None) -> ImageData:
    """Images (and labels) from a NumPy .npz archive, read without unpickling.

    Keys: "x" and optional "y"; or, with `split`, MNIST-style "x_{split}" and optional "y_{split}" (an archive with
    plain x/y keys holds only the split "train"). x: uint8 0..255, or float in [-1, 1], shaped [N, H, W],
    [N, H, W, C] (channel-last when the last dim is 1 or 3) or [N, C, H, W] (C in 1, 3). y: integers >= 0, [N].
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"path: no file {str(file)!r}")
    try:
        archive = np.load(file, allow_pickle=False)
    except DAMAGE as err:
        raise ValueError(f"{file}: not a readable .npz archive ({_first_line(err)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TypeError(f"{file}: expected a .npz archive of named arrays, got a single .npy array")
    with archive:
        found = sorted(archive.files)
        plain = split is None or (split == "train" and "x" in found and "x_train" not in found)
        x_key, y_key = ("x", "y") if plain else (f"x_{split}", f"y_{split}")
        if x_key not in found:
            split_keys = split is None and any(k.startswith("x_") for k in found)
            hint = "; pass split= for MNIST-style keys" if split_keys else ""
            raise ValueError(f"{file}: no key {x_key!r}; found {found}{hint}")
        x = read_key(archive, file, x_key)
        y = read_key(archive, file, y_key) if y_key in found else None
    images = images_from_array(x, file, x_key)
    if y is None:
        return ImageData(images)
    if y.dtype.kind not in "iu" or y.shape != (len(images),):
        raise ValueError(f"{file}: key {y_key!r}: expected {len(images)} integer labels [N] like {x_key!r}, "
                         f"got {y.dtype} {y.shape}")
    if len(y) and not 0 <= y.min() <= y.max() < MAX_CLASSES:
        raise ValueError(f"{file}: key {y_key!r}: expected labels in [0, {MAX_CLASSES}), got [{y.min()}, {y.max()}]")
    return ImageData(images, torch.from_numpy(y.astype(np.int64)))


def load_dataset(name: str, path: str | Path | None = None, resolution: int | None = None, split: str = "train",
                 n: int | None = None, seed: int = 0):
    """The data set `name` ("mnist", "folder", "npz", "latents", "ring", "grid"): the one entry point the trainer
    calls (through mcm_fast.data.splits), with its arguments checked by check_arguments. "latents" is the cache
    of `mcm-fast encode` (mcm_fast.data.latents)."""
    check_arguments(name, path, resolution, split, n)
    if name == "latents":
        from mcm_fast.data.latents import load_latents

        return load_latents(path)
    if name == "mnist":
        return load_mnist(split, 32 if resolution is None else resolution)
    if name in TOYS:
        return load_toy(name, n, seed)
    if name == "folder":
        return load_image_folder(path, resolution)
    data = load_npz(path, split)
    height, width = data.shape[1:]
    if resolution is not None and (height, width) != (resolution, resolution):
        raise ValueError(f"resolution: the npz images in {str(path)!r} are {height}x{width} and are not resized; "
                         f"expected None or their size, got {resolution!r}")
    return data


def check_arguments(name: str, path=None, resolution=None, split: str = "train", n=None) -> None:
    """load_dataset's arguments, checked without reading any data (a run's config checks them before it starts).

    mnist reads resolution (default 32: one of MNIST_RESOLUTIONS) and split (train or test); folder path and
    resolution; npz path, split and resolution (arrays are not resized: it must be None or their size); ring and
    grid read n (and seed). An argument the kind does not read is an error unless left at its default.
    """
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {', '.join(DATASETS)}, got {name!r}")
    given = {"path": path, "resolution": resolution, "split": split, "n": n}
    unused = {k: v for k, v in given.items() if k not in USES[name] and v != ("train" if k == "split" else None)}
    if unused:
        names = ", ".join(unused)
        values = ", ".join(f"{k}={v!r}" for k, v in unused.items())
        raise ValueError(f"{names}: not used by data set {name!r} (it reads {', '.join(USES[name])}), got {values}")
    if name == "mnist":
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test' for MNIST, got {split!r}")
        if resolution is not None and resolution not in MNIST_RESOLUTIONS:
            raise ValueError(f"resolution: expected one of {', '.join(map(str, MNIST_RESOLUTIONS))} for MNIST, got "
                             f"{resolution!r}")
    elif name in TOYS:
        if n is None:
            raise ValueError(f"n: data set {name!r} needs the number of points to draw")
    elif path is None:
        raise ValueError(f"path: data set {name!r} needs a path")
    elif name == "folder" and resolution is None:
        raise ValueError("resolution: data set 'folder' needs a resolution to resize its images to")


def _first_line(err: Exception) -> str:
    """An exception's message cut to one line, for one-line errors."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The PNG/JPEG files in folder (and its subfolders when recursive), sorted, hidden ones skipped."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in files if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def read_image(file: Path, resolution: int) -> np.ndarray:
    """One image center-cropped and resized to [r, r] (grayscale) or [r, r, 3] (RGB), uint8."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            image.load()
            if image.mode in GRAY16_MODES:
                levels = np.asarray(image, dtype=np.float64).clip(0, 65535)
                image = Image.fromarray(np.rint(levels / 257).astype(np.uint8))  # 0..65535 -> 0..255
            image = image.convert("L" if image.mode in GRAY_MODES else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{file}: not a readable PNG/JPEG image ({_first_line(err)})") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.BOX if side % resolution == 0 else Image.BICUBIC)
    return np.asarray(image)


def stack_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 [N, C, r, r] of read_image's arrays: 1 channel if all are grayscale, else 3 (grayscale repeated)."""
    if any(a.ndim == 3 for a in arrays):
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # [N, 3, r, r]
    return torch.from_numpy(np.stack(arrays))[:, None]  # [N, 1, r, r]


def read_key(archive, file: Path, key: str) -> np.ndarray:
    """archive[key] once its declared size is known to fit; an object array (which would need unpickling) or a
    damaged member is an error naming both."""
    _check_declared_size(archive, file, key)
    try:
        return archive[key]
    except ValueError as err:
        reason = _first_line(err)
        raise ValueError(f"{file}: key {key!r}: cannot be read without unpickling or is damaged ({reason})") from None
    except DAMAGE as err:
        raise ValueError(f"{file}: key {key!r}: damaged ({_first_line(err)})") from None


def _check_declared_size(archive, file: Path, key: str) -> None:
    """The array under key declares its shape and dtype in its .npy header: read that header alone, and refuse an
    array larger than its archive member says it holds, or than this machine's memory, before reading it."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        info = archive.zip.getinfo(f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key)
        with archive.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in readers:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = readers[version](member)
    except DAMAGE as err:
        raise ValueError(f"{file}: key {key!r}: damaged header ({_first_line(err)})") from None
    size = math.prod(shape) * dtype.itemsize
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if size > info.file_size or size > memory:
        raise ValueError(f"{file}: key {key!r}: declares {dtype} {shape} ({size:,} bytes), but its member holds "
                         f"{info.file_size:,} bytes and this machine has {memory:,}; expected an array that fits both")


def images_from_array(x: np.ndarray, file: Path, key: str) -> torch.Tensor:
    """An npz image array as uint8 or float32 [N, C, H, W] (see load_npz for the layouts and ranges)."""
    if x.ndim == 3:
        x = x[:, None]  # [N, 1, H, W]
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise ValueError(f"{file}: key {key!r}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W] with C in "
                         f"1, 3, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{file}: key {key!r}: expected at least one image, got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype.kind != "f":
        raise ValueError(f"{file}: key {key!r}: expected uint8 (0..255) or float (in [-1, 1]) images, got {x.dtype}")
    if not np.isfinite(x).all() or x.min() < -1 or x.max() > 1:
        raise ValueError(f"{file}: key {key!r}: expected finite float values in [-1, 1], got [{x.min()}, {x.max()}]")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
