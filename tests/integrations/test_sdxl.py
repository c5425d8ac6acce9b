"""SDXL pipeline folders (issue 34): a CLIPTextModel and a CLIPTextModelWithProjection whose penultimate states side by
side are the prompt embeddings, the second's projection the UNet's added text_embeds, the image size its time_ids,
zeros as the null prompt (force_zeros_for_empty_prompt), on an EulerDiscreteScheduler's betas. Encoded as the
pipeline encodes, distilled into a LoRA student and sampled by the stock StableDiffusionXLPipeline as mf.sample
samples."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from stock_pipeline import assert_samples_as_mf, stock_pipeline  # noqa: E402

from mcm_fast.cli import main  # noqa: E402
from mcm_fast.data.captions import DIGIT_PROMPTS  # noqa: E402
from mcm_fast.data.images import load_mnist  # noqa: E402
from mcm_fast.data.latents import load_latents  # noqa: E402
from mcm_fast.integrations.diffusers import MCMScheduler  # noqa: E402
from mcm_fast.integrations.pipelines import pipeline_settings  # noqa: E402
from mcm_fast.integrations.text_to_image import TextToImageParts  # noqa: E402
from mcm_fast.integrations.tiny import tiny_sdxl_pipeline  # noqa: E402
from mcm_fast.train.build import load_model  # noqa: E402
from mcm_fast.train.config import load_config  # noqa: E402
from mcm_fast.train.loop import train  # noqa: E402


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "pipeline")


@pytest.fixture(scope="module")
def cache(sdxl):
    digits = load_mnist("test", 16)
    source = sdxl.parent / "digits.npz"
    np.savez(source, x=(digits.images[:64].numpy() * 127.5 + 127.5).round().astype(np.uint8),
             text=np.array([DIGIT_PROMPTS[k] for k in digits.labels[:64].tolist()]))
    assert main(["encode", "--pipeline", str(sdxl), "--data", str(source), "--out", str(sdxl.parent / "cache"),
                 "--threads", "1"]) == 0
    return sdxl.parent / "cache"


def test_prompts_encode_as_sdxls_pipeline_does_and_the_null_prompt_is_zeros(sdxl, cache):
    pipe = stock_pipeline(sdxl)
    prompts = ["a handwritten digit seven", "a handwritten digit one"]
    with torch.no_grad():
        embeds, null, pooled, null_pooled = pipe.encode_prompt(prompts, do_classifier_free_guidance=True)
    parts = TextToImageParts(sdxl)
    ours = parts.encode_prompts(prompts)
    torch.testing.assert_close(ours["encoder_hidden_states"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours["pooled_projections"], pooled, rtol=0, atol=0)
    assert not null.any() and not null_pooled.any()
    torch.testing.assert_close(parts.null_cond(), {"encoder_hidden_states": null[:1],
                                                   "pooled_projections": null_pooled[:1]}, rtol=0, atol=0)
    expected = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32,
                                      pipe.text_encoder_2.config.projection_dim)
    data = load_latents(cache)
    assert set(data.cond) == {"encoder_hidden_states", "pooled_projections", "time_ids"}
    torch.testing.assert_close(data.cond["time_ids"][:3], expected.repeat(3, 1), rtol=0, atol=0)
    assert set(data.null_cond) == {"encoder_hidden_states", "pooled_projections"}
    assert pipeline_settings(sdxl)[1] == {"shape": [4, 8, 8], "num_classes": 0, "text": [8, 64], "pooled": 32}


def test_an_sdxl_lora_student_samples_in_the_stock_pipeline_as_mf_sample_does(sdxl, cache, tmp_path):
    config = load_config({"preset": "tiny-cd", "teacher": str(sdxl), "steps": 2, "lora_rank": 4,
                          "optim": {"batch_size": 8, "warmup": 2}, "save_every": 0, "eval_samples": 6,
                          "sample_steps": 2, "objective": {"student_steps": 2, "teacher_steps": 4},
                          "data": {"name": "latents", "path": str(cache), "resolution": None}})
    train(config, tmp_path / "run", progress=False)
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "lora")]) == 0
    pipe = stock_pipeline(sdxl)
    pipe.load_lora_weights(tmp_path / "lora")
    pipe.scheduler = MCMScheduler.from_pretrained(tmp_path / "lora")
    assert assert_samples_as_mf(pipe, load_model(tmp_path / "run")[0], sdxl, 2) == 2
