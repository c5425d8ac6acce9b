"""Helpers for the tests that load what mcm_fast exports into a stock diffusers StableDiffusionPipeline."""
import diffusers
import torch

import mcm_fast as mf
from mcm_fast.integrations.text_to_image import TextToImageParts


def stock_pipeline(folder):
    """StableDiffusionPipeline.from_pretrained(folder), safetensors only, no progress bar."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_samples_as_mf(pipe, model, text_pipeline, steps: int, guidance: float = 0.0, seed: int = 3,
                         prompt: str = "a handwritten digit three") -> int:
    """pipe(prompt, num_inference_steps=steps, guidance_scale=1 + guidance) from a noise gives mf.sample(model,
    steps, guidance=guidance)'s latents from the same noise and text_pipeline's embedding of the prompt (atol
    1e-5); returns the pipeline's UNet calls."""
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    latents = pipe(prompt, num_inference_steps=steps, guidance_scale=1.0 + guidance, latents=noise.clone(),
                   output_type="latent").images
    text = TextToImageParts(text_pipeline).encode_prompts([prompt])
    expected = mf.sample(model, steps, noise=noise.clone(), guidance=guidance, **text)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    return len(calls)
