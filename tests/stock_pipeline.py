"""Helpers for the tests that load what mcm_fast exports into a stock diffusers pipeline (StableDiffusionPipeline,
or StableDiffusion3Pipeline for an SD3 folder)."""
import torch

import mcm_fast as mf
from experiments.text_to_image import stock_pipeline  # noqa: F401  (the tests load pipelines as the study does)
from mcm_fast.integrations.text_to_image import TextToImageParts
from mcm_fast.schedules import alpha_sigma


def assert_samples_as_mf(pipe, model, text_pipeline, steps: int, guidance: float = 0.0, seed: int = 3,
                         prompt: str = "a handwritten digit three") -> int:
    """pipe(prompt, num_inference_steps=steps, guidance_scale=1 + guidance) from a noise gives mf.sample(model,
    steps, guidance=guidance)'s latents from the same noise (as the VP z_1 mf.sample takes: the pipeline's own
    latent scaled by alpha_1 / a_1, 1 for VP schedules) and text_pipeline's embedding of the prompt (atol 1e-5);
    returns the pipeline's network calls."""
    calls = []
    network = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    network.register_forward_pre_hook(lambda *_: calls.append(1))
    config = network.config
    noise = torch.randn(1, config.in_channels, config.sample_size, config.sample_size,
                        generator=torch.Generator().manual_seed(seed))
    latents = pipe(prompt, num_inference_steps=steps, guidance_scale=1.0 + guidance, latents=noise.clone(),
                   output_type="latent").images
    parts = TextToImageParts(text_pipeline)
    text = {**parts.encode_prompts([prompt]), **parts.image_conditions(parts.image_shape[1], 1)}  # SDXL: time_ids
    logsnr = model.schedule.logsnr(torch.tensor([1.0], dtype=torch.float64))
    to_vp = float(alpha_sigma(logsnr)[0] / model.schedule.native_alpha_sigma(logsnr)[0])
    expected = mf.sample(model, steps, noise=noise.clone() * to_vp, guidance=guidance, **text)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    return len(calls)
