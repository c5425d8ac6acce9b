"""`mcm-fast encode`: captioned images through a text-to-image pipeline's VAE and text encoder into the latent
cache that a latent run trains on (mcm_fast.data.latents), once, before training."""
from __future__ import annotations

from pathlib import Path

from mcm_fast.data.captions import load_captioned
from mcm_fast.data.images import ImageData
from mcm_fast.data.latents import encode_latents, load_latents
from mcm_fast.threads import governed


def encode(pipeline, data, out, resolution: int | None = None, split: str = "train", seed: int = 0,
           batch_size: int = 64, device: str = "cpu", threads: int | None = None, echo=print) -> Path:
    """Encodes data (a folder with metadata.jsonl, an .npz with x and text, or "mnist") at resolution (default:
    the VAE's sample size) into out; grayscale images go to an RGB VAE as three equal channels. Resumes.
    threads: CPU threads, None: the cores other processes leave free (mcm_fast.threads)."""
    from mcm_fast.integrations.text_to_image import TextToImageParts

    parts = TextToImageParts(pipeline, device, what="pipeline")
    for module in (parts.vae, *(encoder for _, encoder in parts.encoders)):
        governed(module, threads)
    channels, side = parts.image_shape
    images, captions = load_captioned(data, side if resolution is None else resolution, split, channels)
    if isinstance(images, ImageData) and images.shape[0] == 1 and channels == 3:
        images = ImageData(images.images.expand(-1, 3, -1, -1).contiguous())
    echo(f"{data}: {len(images)} captioned images -> {out} (VAE {pipeline}, seed {seed})")
    path = encode_latents(images, captions, parts, out, seed=seed, batch_size=batch_size, echo=echo,
                          source=str(data))
    cached = load_latents(path)
    shapes = ", ".join(f"{k} {list(v.shape[1:])}" for k, v in cached.cond.items())
    echo(f"{path}: latents {list(cached.shape)}, {shapes}")
    return path
