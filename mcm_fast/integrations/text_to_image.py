"""The parts of a diffusers text-to-image pipeline folder that turn captioned images into what a latent model trains
on (issue 34): the VAE (images <-> latents, with its scaling and shift factors) and the text encoders with their
tokenizers (prompts -> the embeddings the denoiser attends to). Stable Diffusion 1.x/2.x's layout: vae/,
text_encoder/ (CLIPTextModel), tokenizer/; SDXL's: a CLIPTextModel and a CLIPTextModelWithProjection (text_encoder/,
text_encoder_2/), whose penultimate states side by side are encoder_hidden_states, the second's projection the
pooled_projections (the UNet's added text_embeds) and the image size its time_ids; SD3's: two
CLIPTextModelWithProjection and an optional T5EncoderModel (text_encoder_3/), whose embeddings SD3's pipeline
joins into encoder_hidden_states [B, 77 + 256, D] and pooled_projections [B, P]. Loaded from safetensors only (a pickled
.bin is refused), nothing downloaded; needs the optional extras diffusers and transformers.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from mcm_fast.data.latents import file_sha256, read_manifest
from mcm_fast.integrations.pipelines import T5_LENGTH, safetensors_weights, weights_digest
from mcm_fast.models.diffusers_nets import import_diffusers

TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")  # what encode_prompts reads last_hidden_state of
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
FAMILIES = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3"}  # model_index's class; else "sd"
SDXL_ENCODERS = {"text_encoder": ("CLIPTextModel", "tokenizer", "CLIPTokenizer"),
                 "text_encoder_2": ("CLIPTextModelWithProjection", "tokenizer_2", "CLIPTokenizer")}
SD3_ENCODERS = {"text_encoder": ("CLIPTextModelWithProjection", "tokenizer", "CLIPTokenizer"),
                "text_encoder_2": ("CLIPTextModelWithProjection", "tokenizer_2", "CLIPTokenizer"),
                "text_encoder_3": ("T5EncoderModel", "tokenizer_3", "T5TokenizerFast")}  # folder: (class, tokenizer)
MORE_ENCODERS = ("text_encoder_2", "text_encoder_3")  # what a Stable Diffusion 1.x/2.x folder must not have


def import_transformers():
    """The transformers module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise ImportError("transformers: not installed; pip install transformers==5.23.0 (the optional extra, "
                          "beside the pinned torch)") from None
    return transformers


class TextToImageParts:
    """The VAE, tokenizers and text encoders of a pipeline folder (Stable Diffusion 1.x/2.x, SDXL or SD3, as its
    model_index.json names it), frozen, in eval mode, on device; `what` names the folder's argument in errors."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", what: str = "teacher"):
        self.folder, self.what = Path(folder), what
        index = self._index()
        self.family = FAMILIES.get(index.get("_class_name"), "sd")
        if self.family == "sd":
            for name in MORE_ENCODERS:
                if index.get(name, [None])[0] is not None:
                    raise ValueError(f"{what}: {self.folder} has a second text encoder ({name}) but model_index.json "
                                     f"names {index.get('_class_name')!r}; expected a StableDiffusionPipeline (one "
                                     f"encoder), a StableDiffusionXLPipeline or a StableDiffusion3Pipeline")
            name = json.loads((self.folder / "text_encoder" / "config.json").read_text()).get("architectures",
                                                                                              [None])[0]
            if name not in TEXT_ENCODERS:
                raise ValueError(f"{what}: expected a text encoder of {TEXT_ENCODERS} in "
                                 f"{self.folder / 'text_encoder'}, got {name!r}")
            encoders = {"text_encoder": (name, "tokenizer", "CLIPTokenizer")}
        else:
            specs = SD3_ENCODERS if self.family == "sd3" else SDXL_ENCODERS
            encoders = {name: spec for name, spec in specs.items() if index.get(name, [None])[0] is not None}
            if set(encoders) < {"text_encoder", "text_encoder_2"}:
                raise ValueError(f"{what}: {self.folder} is an {self.family.upper()} pipeline without its two CLIP "
                                 f"text encoders; expected text_encoder/ and text_encoder_2/")
        if self.family == "sd3":
            self.joint_dim = json.loads((self.folder / "transformer" / "config.json").read_text())[
                "joint_attention_dim"]
        self.zero_null = self.family == "sdxl" and index.get("force_zeros_for_empty_prompt", True)
        self.digests = {"vae": file_sha256(safetensors_weights(self.folder / "vae", VAE_WEIGHTS, what)),
                        **{name: weights_digest(self.folder / name, what) for name in encoders}}
        transformers = import_transformers()
        self.vae = import_diffusers().AutoencoderKL.from_pretrained(
            self.folder / "vae", local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False)
        self.encoders = [(getattr(transformers, tokenizer_class).from_pretrained(self.folder / tokenizer,
                                                                                local_files_only=True),
                          getattr(transformers, encoder_class).from_pretrained(self.folder / name,
                                                                               local_files_only=True,
                                                                               use_safetensors=True))
                         for name, (encoder_class, tokenizer, tokenizer_class) in encoders.items()]
        self.tokenizer, self.text_encoder = self.encoders[0]
        for module in (self.vae, *(encoder for _, encoder in self.encoders)):
            module.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(self.vae.config.get("shift_factor") or 0.0)

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
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The denoiser's text inputs for prompts, as the pipeline computes them (float32): Stable Diffusion's
        {"encoder_hidden_states": the text encoder's last hidden states [B, L, D]} of the prompts padded (and cut)
        to the tokenizer's length; SD3's the two CLIP encoders' penultimate hidden states side by side, padded to
        the transformer's width, before T5's (zeros without a T5), and their pooled outputs side by side as
        "pooled_projections"; SDXL's the same two CLIP states and the second encoder's pooled output only."""
        if not (isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts)):
            raise TypeError(f"prompts: expected a list of strings, got {prompts!r:.80}")
        if self.family == "sd":
            return {"encoder_hidden_states": self.text_encoder(self._ids(self.tokenizer, prompts))[0].float()}
        length = self.tokenizer.model_max_length if self.family == "sd3" else None
        clip = [encoder(self._ids(tokenizer, prompts, length), output_hidden_states=True)
                for tokenizer, encoder in self.encoders[:2]]
        hidden = torch.cat([out.hidden_states[-2] for out in clip], dim=-1).float()
        if self.family == "sdxl":  # the pooled projection of the second encoder only
            return {"encoder_hidden_states": hidden, "pooled_projections": clip[1][0].float()}
        if len(self.encoders) == 3:
            t5 = self.encoders[2][1](self._ids(self.encoders[2][0], prompts, T5_LENGTH))[0].float()
        else:
            t5 = torch.zeros(len(prompts), T5_LENGTH, self.joint_dim, device=self.device)
        return {"encoder_hidden_states": torch.cat([F.pad(hidden, (0, t5.shape[-1] - hidden.shape[-1])), t5], dim=-2),
                "pooled_projections": torch.cat([out[0] for out in clip], dim=-1).float()}

    def null_cond(self) -> dict[str, torch.Tensor]:
        """The null condition [1, ...] of classifier-free guidance as the pipeline forms it: the empty prompt's
        embeddings, or zeros for an SDXL pipeline with force_zeros_for_empty_prompt (its default)."""
        empty = self.encode_prompts([""])
        return {k: torch.zeros_like(v) for k, v in empty.items()} if self.zero_null else empty

    def image_conditions(self, side: int, n: int) -> dict[str, torch.Tensor]:
        """The inputs of n images of this side beyond the prompt: SDXL's time_ids (original size, crop corner,
        target size: side, side, 0, 0, side, side, what its pipeline passes at height = width = side); else none."""
        if self.family != "sdxl":
            return {}
        return {"time_ids": torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32).repeat(n, 1)}

    def _ids(self, tokenizer, prompts: list[str], length: int | None = None) -> torch.Tensor:
        """Token ids of prompts padded (and cut) to length (the tokenizer's own by default), on the device."""
        return tokenizer(list(prompts), padding="max_length", max_length=length or tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(self.device)


@functools.lru_cache(maxsize=2)
def _pipeline_parts(folder: str) -> TextToImageParts:
    return TextToImageParts(folder, what="data.path")


def latent_decoder(directory: str | Path):
    """latents -> images of a latent cache: the VAE of the pipeline folder that encoded it (its manifest's)."""
    return _pipeline_parts(read_manifest(directory)["pipeline"]).decode


def check_cache_of(pipeline: str | Path, cache: str | Path) -> None:
    """A latent cache that a pipeline's network is distilled on must have been encoded by that pipeline's VAE and
    text encoders (the sha256 of their weights, as its manifest records them)."""
    recorded = read_manifest(cache)["encoder"]["weights_sha256"]
    folder = Path(pipeline)
    digests = {name: file_sha256(safetensors_weights(folder / "vae", VAE_WEIGHTS, "teacher")) if name == "vae"
               else weights_digest(folder / name, "teacher") for name in recorded}
    if digests != recorded:
        raise ValueError(f"teacher: the VAE or text encoders of {folder} did not encode data.path {cache}; expected "
                         f"its own latents (mcm-fast encode --pipeline {folder})")
