"""The parts of a diffusers text-to-image pipeline folder that turn captioned images into what a latent model trains
on (issue 34): the VAE (images <-> latents, with its scaling and shift factors) and the text encoder with its
tokenizer (prompts -> the embeddings the denoiser cross-attends to). Stable Diffusion 1.x/2.x's layout: vae/,
text_encoder/ (CLIPTextModel), tokenizer/. Loaded from safetensors only (a pickled .bin is refused), nothing
downloaded; needs the optional extras diffusers and transformers.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from mcm_fast.data.latents import file_sha256, read_manifest
from mcm_fast.integrations.pipelines import safetensors_weights
from mcm_fast.models.diffusers_nets import import_diffusers

TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")  # what encode_prompts reads last_hidden_state of
PARTS = {"vae": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}  # their weights files
MORE_ENCODERS = ("text_encoder_2", "text_encoder_3")  # SDXL's and SD3's further encoders: not read yet


def import_transformers():
    """The transformers module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise ImportError("transformers: not installed; pip install transformers==5.23.0 (the optional extra, "
                          "beside the pinned torch)") from None
    return transformers


class TextToImageParts:
    """The VAE, tokenizer and text encoder of a pipeline folder, frozen, in eval mode, on device; `what` names the
    folder's argument in errors."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", what: str = "teacher"):
        self.folder, self.what = Path(folder), what
        index = self._index()
        for name in MORE_ENCODERS:
            if index.get(name, [None])[0] is not None:
                raise ValueError(f"{what}: {self.folder} has a second text encoder ({name}: SDXL or SD3); expected "
                                 f"one (Stable Diffusion 1.x/2.x); more encoders are not supported yet")
        weights = {part: safetensors_weights(self.folder / part, file, what) for part, file in PARTS.items()}
        encoder_class = json.loads((self.folder / "text_encoder" / "config.json").read_text()).get("architectures",
                                                                                                   [None])[0]
        if encoder_class not in TEXT_ENCODERS:
            raise ValueError(f"{what}: expected a text encoder of {TEXT_ENCODERS} in {self.folder / 'text_encoder'},"
                             f" got {encoder_class!r}")
        transformers = import_transformers()
        self.vae = import_diffusers().AutoencoderKL.from_pretrained(
            self.folder / "vae", local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False)
        self.text_encoder = getattr(transformers, encoder_class).from_pretrained(
            self.folder / "text_encoder", local_files_only=True, use_safetensors=True)
        self.tokenizer = transformers.CLIPTokenizer.from_pretrained(self.folder / "tokenizer", local_files_only=True)
        for module in (self.vae, self.text_encoder):
            module.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(self.vae.config.get("shift_factor") or 0.0)
        self.digests = {part: file_sha256(path) for part, path in weights.items()}

    def _index(self) -> dict:
        path = self.folder / "model_index.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.what}: no {path}; expected a diffusers pipeline folder (save_pretrained's "
                                    f"layout: model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/)")
        return json.loads(path.read_text())

    @property
    def identity(self) -> dict:
        """What a latent cache made by these parts depends on: the weights' sha256, the VAE's factors and the
        tokenizer's length."""
        return {"weights_sha256": self.digests, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "prompt_length": self.tokenizer.model_max_length}

    @property
    def image_shape(self) -> tuple[int, int]:
        """(channels, side) of the images the VAE takes (its config's sample_size)."""
        return self.vae.config.in_channels, self.vae.config.sample_size

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents z = (sample of q(z | x) - shift) * scaling for images x [B, C, H, W] in [-1, 1]; generator
        draws the sample (float32, on the VAE's device)."""
        posterior = self.vae.encode(x.to(self.device, torch.float32)).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator, device=generator.device if generator else
                            self.device).to(self.device)
        latent = posterior.mean + posterior.std * noise
        return (latent - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] (about [-1, 1]) of latents z, the inverse of encode_images' scaling."""
        return self.vae.decode(z.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor).sample

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder's last hidden states [B, L, D] of prompts padded (and cut) to the tokenizer's length:
        the encoder_hidden_states of Stable Diffusion's UNet."""
        if not (isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts)):
            raise TypeError(f"prompts: expected a list of strings, got {prompts!r:.80}")
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].float()


@functools.lru_cache(maxsize=2)
def _pipeline_parts(folder: str) -> TextToImageParts:
    return TextToImageParts(folder, what="data.path")


def latent_decoder(directory: str | Path):
    """latents -> images of a latent cache: the VAE of the pipeline folder that encoded it (its manifest's)."""
    return _pipeline_parts(read_manifest(directory)["pipeline"]).decode


def check_cache_of(pipeline: str | Path, cache: str | Path) -> None:
    """A latent cache that a pipeline's UNet is distilled on must have been encoded by that pipeline's VAE and
    text encoder (the sha256 of their weights, as its manifest records them)."""
    recorded = read_manifest(cache)["encoder"]["weights_sha256"]
    folder = Path(pipeline)
    if any(file_sha256(safetensors_weights(folder / part, name, "teacher")) != recorded.get(part)
           for part, name in PARTS.items()):
        raise ValueError(f"teacher: the VAE or text encoder of {folder} did not encode data.path {cache}; expected "
                         f"its own latents (mcm-fast encode --pipeline {folder})")
