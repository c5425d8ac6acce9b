"""Issue 34's flow-matching transformers: an SD3 pipeline folder (two CLIP text encoders with pooled outputs, an
SD3Transformer2DModel on FlowMatchEulerDiscreteScheduler with its shift) as a teacher. Its schedule against
diffusers' own sigmas and timesteps, its prompt embeddings against the pipeline's encode_prompt, its denoiser
against the transformer's velocity read by hand, and the whole path through the command line: a latent cache with
pooled embeddings, a LoRA student (and a full one), exported and sampled by the stock StableDiffusion3Pipeline as
mf.sample samples."""
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from stock_pipeline import assert_samples_as_mf, stock_pipeline  # noqa: E402

import mcm_fast as mf  # noqa: E402
from mcm_fast.cli import main  # noqa: E402
from mcm_fast.data.captions import DIGIT_PROMPTS  # noqa: E402
from mcm_fast.data.images import load_mnist  # noqa: E402
from mcm_fast.integrations.diffusers import MCMScheduler, teacher_from_diffusers  # noqa: E402
from mcm_fast.integrations.pipelines import pipeline_settings  # noqa: E402
from mcm_fast.integrations.text_to_image import TextToImageParts  # noqa: E402
from mcm_fast.integrations.tiny import tiny_sd3_pipeline  # noqa: E402
from mcm_fast.train.build import load_model  # noqa: E402
from mcm_fast.train.config import load_config  # noqa: E402
from mcm_fast.train.loop import train  # noqa: E402

RUN = {"optim": {"batch_size": 8, "warmup": 2}, "log_every": 1, "save_every": 0, "eval_samples": 6,
       "sample_steps": 2, "objective": {"student_steps": 2, "teacher_steps": 4}}


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "pipeline")


@pytest.fixture(scope="module")
def sd3_t5(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3-t5") / "pipeline", t5=True)


def encoded(pipeline):
    """A latent cache of 64 captioned MNIST test digits (an npz with x and text) through pipeline."""
    digits = load_mnist("test", 16)
    labels = digits.labels[:64].tolist()
    source = pipeline.parent / "digits.npz"
    np.savez(source, x=(digits.images[:64].numpy() * 127.5 + 127.5).round().astype(np.uint8),
             text=np.array([DIGIT_PROMPTS[k] for k in labels]))
    assert main(["encode", "--pipeline", str(pipeline), "--data", str(source), "--out",
                 str(pipeline.parent / "cache"), "--threads", "1"]) == 0
    return pipeline.parent / "cache"


def test_the_shifted_flow_is_flow_match_eulers_training_schedule():
    """u = shift s / (1 + (shift - 1) s) at the s of FlowMatchEulerDiscreteScheduler's training grid, and the
    transformer's timestep 1000 u: its sigmas and timesteps."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = mf.FlowSchedule(shift=3.0, time_scale=1000.0)
    s = torch.tensor([0.001, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    v_min, v_max = (schedule._unshift(u) for u in (schedule.u_min, schedule.u_max))
    t = ((s - v_min) / (v_max - v_min)).clamp(0, 1)
    index = (1000 - (s * 1000).round()).long()  # the scheduler's grid runs from s = 1 down
    sigmas = scheduler.sigmas[index].double()
    ours = schedule.native_time(t, schedule.logsnr(t)) / 1000
    torch.testing.assert_close(ours[:-1], sigmas[:-1], rtol=1e-6, atol=1e-7)
    assert abs(ours[-1].item() - 1) < 1e-3  # u stops at the logSNR floor, -15: 1 - 5.5e-4
    torch.testing.assert_close(schedule.native_time(t, None)[1:4].float(), scheduler.timesteps[index][1:4],
                               rtol=1e-6, atol=1e-3)


def test_an_sd3_folder_reads_as_a_flow_teacher_and_bad_ones_are_one_line_errors(sd3, tmp_path):
    settings, info = pipeline_settings(sd3)
    assert settings["model"] == "diffusers-sd3" and settings["prediction"] == "flow"
    assert settings["schedule"] == "flow" and settings["schedule_options"] == {"shift": 3.0, "time_scale": 1000.0}
    assert info == {"shape": [4, 8, 8], "num_classes": 0, "text": [8 + 256, 64], "pooled": 64}
    folder = shutil.copytree(sd3, tmp_path / "p")
    config = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(config.read_text())
    config.write_text(json.dumps({**scheduler, "use_dynamic_shifting": True}))
    with pytest.raises(ValueError, match=r"^teacher: .* shifts by resolution \(use_dynamic_shifting\)"):
        pipeline_settings(folder)
    config.write_text(json.dumps({**scheduler, "_class_name": "DDPMScheduler"}))
    with pytest.raises(ValueError, match=r"^teacher: a flow transformer samples with FlowMatchEulerDiscreteScheduler"):
        pipeline_settings(folder)




@pytest.mark.parametrize("with_t5", [False, True])
def test_prompts_encode_as_sd3s_pipeline_does(sd3, sd3_t5, with_t5):
    """The two CLIP encoders' penultimate states side by side, padded to the transformer's width, before T5's 256
    tokens (zeros without a T5), and their pooled outputs: what the pipeline's encode_prompt computes."""
    folder = sd3_t5 if with_t5 else sd3
    pipe = stock_pipeline(folder)
    prompts = ["a handwritten digit seven", ""]
    with torch.no_grad():  # as the pipeline's __call__ runs it
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    ours = TextToImageParts(folder).encode_prompts(prompts)
    assert set(ours) == {"encoder_hidden_states", "pooled_projections"}
    assert bool(ours["encoder_hidden_states"][:, 8:].abs().sum() > 0) == with_t5
    assert ours["encoder_hidden_states"].shape == (2, 8 + 256, 64) and ours["pooled_projections"].shape == (2, 64)
    torch.testing.assert_close(ours["encoder_hidden_states"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours["pooled_projections"], pooled, rtol=0, atol=0)


def test_the_teacher_reads_the_transformers_velocity(sd3):
    """x_hat = z - u v at the transformer's timestep 1000 u, for the flow's own z = (a / alpha) z_t."""
    pipe = stock_pipeline(sd3)
    teacher = teacher_from_diffusers(pipe.transformer, pipe.scheduler)
    generator = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(3, 4, 8, 8, generator=generator), torch.tensor([0.1, 0.5, 0.95])
    text = {"encoder_hidden_states": torch.randn(3, 264, 64, generator=generator),
            "pooled_projections": torch.randn(3, 64, generator=generator)}
    logsnr = teacher.schedule.logsnr(t.double())
    u = torch.sigmoid(-logsnr / 2)  # the flow's noise level at t
    z = z_t.double() * ((1 - u) / torch.sigmoid(logsnr).sqrt()).view(-1, 1, 1, 1)  # (a / alpha) z_t
    with torch.no_grad():
        v = pipe.transformer(z.float(), timestep=(1000 * u).float(), **text).sample
        ours = teacher(z_t, t, **text)
    torch.testing.assert_close(ours, (z - u.view(-1, 1, 1, 1) * v.double()).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora, with_t5", [(True, False), (False, False), (True, True)])
def test_an_sd3_student_trains_exports_and_samples_in_the_stock_pipeline(sd3, sd3_t5, tmp_path, lora, with_t5):
    """A LoRA student (the transformer's attention with adapters, the teacher the same network without them) or
    a full one, distilled from the SD3 folder (with or without T5) on its cache: the export loads into
    StableDiffusion3Pipeline (load_lora_weights, or the whole folder) and its MCMScheduler's S calls give
    mf.sample's latents."""
    sd3 = sd3_t5 if with_t5 else sd3
    cache = sd3.parent / "cache" if (sd3.parent / "cache").is_dir() else encoded(sd3)
    config = load_config({"preset": "tiny-cd", **RUN, "teacher": str(sd3), "steps": 2,
                          **({"lora_rank": 4} if lora else {}),
                          "data": {"name": "latents", "path": str(cache), "resolution": None}})
    train(config, tmp_path / "run", progress=False)
    model, kind, info = load_model(tmp_path / "run")
    assert isinstance(model.net.net, diffusers.SD3Transformer2DModel) and isinstance(model.schedule, mf.FlowSchedule)
    assert kind.config.model == "diffusers-sd3" and info["pooled"] == 64
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    if lora:
        pipe = stock_pipeline(sd3)
        pipe.load_lora_weights(tmp_path / "out")
        pipe.scheduler = MCMScheduler.from_pretrained(tmp_path / "out")
    else:
        pipe = stock_pipeline(tmp_path / "out")
        pipe.scheduler = MCMScheduler.from_pretrained(tmp_path / "out")
    assert pipe.scheduler.config.shift == 3.0
    assert assert_samples_as_mf(pipe, model, sd3, 2) == 2


def test_the_documented_sd3_config_trains_on_the_tiny_pipeline(sd3, tmp_path):
    """docs/configs/sd3-medium-mcm-lora.yaml as a GPU user runs it, with only the pipeline, the cache and the sizes
    swapped for the tiny ones: a LoRA student of the flow transformer with gradient checkpointing."""
    from pathlib import Path

    from mcm_fast.train.loop import Trainer

    cache = sd3.parent / "cache" if (sd3.parent / "cache").is_dir() else encoded(sd3)
    doc = Path(__file__).resolve().parents[2] / "docs" / "configs" / "sd3-medium-mcm-lora.yaml"
    cfg = load_config(str(doc), [f"teacher={sd3}", f"data.path={cache}", "data.holdout=0.1", "steps=1", "cooldown=0",
                                 "optim.batch_size=8", "optim.warmup=0", "eval_samples=6", "save_every=0",
                                 "objective.teacher_steps=[8, 16, 10]"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.net.net.is_gradient_checkpointing and trainer.config.lora_rank == 64
    assert isinstance(trainer.net.net, diffusers.SD3Transformer2DModel)
    train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "step-000000001").is_dir()


def test_an_sd3_teacher_trained_here_exports_as_its_pipeline(sd3, tmp_path):
    """A flow transformer trained from scratch on the SD3 cache (the rectified flow with shift 3, timesteps 1000 u,
    velocity) exports as the SD3 pipeline folder with its FlowMatchEulerDiscreteScheduler: read back as a teacher
    folder it is the same denoiser as the run."""
    cache = sd3.parent / "cache" if (sd3.parent / "cache").is_dir() else encoded(sd3)
    options = {k: v for k, v in json.loads((sd3 / "transformer" / "config.json").read_text()).items()
               if not k.startswith("_") and k not in ("sample_size", "in_channels", "out_channels",
                                                      "joint_attention_dim", "pooled_projection_dim")}
    config = load_config({"kind": "teacher", "model": "diffusers-sd3", "model_options": options, "steps": 2,
                          "schedule": "flow", "schedule_options": {"shift": 3.0, "time_scale": 1000.0},
                          "prediction": "flow", "time_input": "native", **{k: RUN[k] for k in RUN if k != "objective"},
                          "data": {"name": "latents", "path": str(cache), "resolution": None}})
    train(config, tmp_path / "teacher", progress=False)
    assert main(["export", "--ckpt", str(tmp_path / "teacher"), "--out", str(tmp_path / "pipe")]) == 0
    pipe = stock_pipeline(tmp_path / "pipe")
    assert isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3
    run, exported = load_model(tmp_path / "teacher")[0], load_model(tmp_path / "pipe")[0]
    generator = torch.Generator().manual_seed(1)
    z, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([0.2, 0.9])
    text = {"encoder_hidden_states": torch.randn(2, 264, 64, generator=generator),
            "pooled_projections": torch.randn(2, 64, generator=generator)}
    torch.testing.assert_close(exported(z, t, **text), run(z, t, **text), rtol=0, atol=0)
