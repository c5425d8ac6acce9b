"""Issue 34 through the command line: a latent cache of captioned MNIST (mcm-fast encode, the tiny pipeline) is a
run's data (data.name latents, 0.1 held out), a UNet2DConditionModel teacher trains on it with the prompts dropped
to the cache's empty prompt, a CD student distills it, both reload with that null prompt, sample grids decode
through the pipeline's VAE, eval scores decoded samples in FD-MNIST against held-out examples of the same
prompts, and guidance uses the empty prompt; mismatched models are one-line errors."""
import json
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from stock_pipeline import assert_samples_as_mf, stock_pipeline  # noqa: E402

from mcm_fast.cli import main  # noqa: E402
from mcm_fast.data.latents import load_null_cond  # noqa: E402
from mcm_fast.integrations.tiny import UNET, tiny_text_pipeline  # noqa: E402
from mcm_fast.metrics.evaluate import sample_inputs  # noqa: E402
from mcm_fast.train.build import load_model  # noqa: E402
from mcm_fast.train.config import ConfigError, load_config  # noqa: E402
from mcm_fast.train.loop import train  # noqa: E402

NETWORK = {"model": "diffusers-unet2d-cond",
           "model_options": {k: v for k, v in UNET.items() if k not in ("sample_size", "in_channels", "out_channels",
                                                                        "cross_attention_dim")}}
RUN = {"optim": {"batch_size": 16, "warmup": 2}, "log_every": 1, "save_every": 0, "eval_samples": 16,
       "sample_steps": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    pipeline = tiny_text_pipeline(root / "pipeline")
    assert main(["encode", "--pipeline", str(pipeline), "--data", "mnist", "--split", "test", "--out",
                 str(root / "cache"), "--threads", "1"]) == 0
    return root / "cache"


def config(cache, **changes):
    return load_config({**NETWORK, **RUN, "data": {"name": "latents", "path": str(cache), "resolution": None},
                        **changes})


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train(config(cache, kind="teacher", steps=3), root / "teacher", progress=False)
    train(config(cache, kind="cd", teacher=str(root / "teacher"), steps=2,
                 objective={"student_steps": 2, "teacher_steps": 8}), root / "cd", progress=False)
    return root


def test_a_text_teacher_and_its_student_train_on_the_cache_and_reload_with_its_null_prompt(cache, runs):
    null = load_null_cond(cache)["encoder_hidden_states"]
    for name in ("teacher", "cd"):
        model, kind, info = load_model(runs / name)
        assert info == {"shape": [4, 8, 8], "num_classes": 0, "text": [8, 32]}
        assert isinstance(model.net.net, diffusers.UNet2DConditionModel)
        assert set(kind.null_cond) == {"encoder_hidden_states"}
        assert torch.equal(kind.null_cond["encoder_hidden_states"], null)
        grid = Image.open(next((runs / name / "samples").glob("*.png")))
        assert grid.size[0] >= 10 * 16  # decoded 16x16 digits, not 8x8 latents
        evals = [json.loads(line)["eval"] for line in (runs / name / "log.jsonl").read_text().splitlines()
                 if '"eval"' in line]
        assert evals and "fd_mnist" in evals[-1]  # decoded and scored in FD-MNIST features
    assert kind.objective.label_dropout == 0.1 and kind.objective.null_cond is kind.null_cond  # prompts dropped too


def test_the_teacher_drops_prompts_to_the_empty_one(cache, monkeypatch):
    from mcm_fast import objectives
    from mcm_fast.train.build import data_null_cond, make_kind

    seen = []
    monkeypatch.setattr("mcm_fast.train.kinds.drop_condition",
                        lambda cond, p, null, generator=None: seen.append((p, null)) or
                        objectives.drop_condition(cond, p, null, generator))
    cfg = config(cache, kind="teacher")
    kind = make_kind(cfg, 0, null_cond=data_null_cond(cfg))
    loss = kind.loss(kind.wrap(lambda z, time, **cond: z), None, {}, lambda f: f)
    loss({"encoder_hidden_states": torch.randn(4, 8, 32)}, torch.randn(4, 4, 8, 8), 0)
    assert seen and seen[0][0] == 0.1 and torch.equal(seen[0][1]["encoder_hidden_states"],
                                                      load_null_cond(cache)["encoder_hidden_states"])


def test_cli_samples_guided_and_evaluates_a_text_run(runs, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(runs / "cd"), "--n", "20", "--guidance", "1.5", "--out",
                 str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size[1] >= 2 * 16
    assert main(["eval", "--ckpt", str(runs / "cd"), "--n", "16", "--steps", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "held out of training" in out and out.count("fd_mnist") == 2


def test_text_data_and_models_must_match(cache, tmp_path):
    with pytest.raises(ConfigError, match=r"^model: 'diffusers-unet2d' for data with prompts; expected "
                                          r"diffusers-unet2d-cond"):
        train(config(cache, kind="teacher", model="diffusers-unet2d", model_options={}, steps=1), tmp_path / "a",
              progress=False)
    with pytest.raises(ConfigError, match=r"^model: 'tiny' takes no prompts"):
        train(config(cache, kind="teacher", model="tiny", model_options={}, steps=1), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match=r"^model: 'diffusers-unet2d-cond' for data without prompts"):
        train(load_config({**NETWORK, **RUN, "steps": 1, "data": {"resolution": 8}}), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=r"^prompts: a text-conditioned model samples for prompt embeddings"):
        sample_inputs({"shape": [4, 8, 8], "num_classes": 0, "text": [8, 32]}, 2, 0)


def test_a_lora_student_of_a_pipeline_holds_one_base_and_exports_for_the_stock_pipeline(cache, tmp_path):
    """teacher=PIPELINE_FOLDER with lora_rank: the teacher is the student's network with its adapters off (no
    parameters of its own), the EMA shares the frozen base, only the adapters train; `mcm-fast export` writes what
    pipe.load_lora_weights reads, and the stock pipeline's 2 calls give mf.sample's latents."""
    from mcm_fast.train.loop import Trainer

    pipeline = cache.parent / "pipeline"
    cfg = config(cache, kind="cd", teacher=str(pipeline), lora_rank=4, lora_alpha=8.0, steps=2,
                 objective={"student_steps": 2, "teacher_steps": 8})
    trainer = Trainer(cfg, tmp_path / "lora", progress=False)
    assert isinstance(trainer.net.net, diffusers.UNet2DConditionModel) and cfg.model == "diffusers-unet2d-cond"
    assert list(trainer.teacher.parameters()) == []
    online = dict(trainer.net.named_parameters())
    trainable = {name for name, p in online.items() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    assert all(p is online[name] for name, p in trainer.ema.named_parameters() if name not in trainable)
    train(cfg, tmp_path / "lora", progress=False)
    assert main(["export", "--ckpt", str(tmp_path / "lora"), "--out", str(tmp_path / "exported")]) == 0
    from safetensors.torch import load_file

    lora = load_file(tmp_path / "exported" / "pytorch_lora_weights.safetensors")
    assert any(name.endswith("lora.up.weight") or "lora_B" in name for name in lora)
    assert any(v.abs().max() > 0 for name, v in lora.items() if "up" in name or "lora_B" in name)  # trained
    from mcm_fast.integrations.diffusers import MCMScheduler

    pipe = stock_pipeline(pipeline)
    pipe.load_lora_weights(tmp_path / "exported")
    pipe.scheduler = MCMScheduler.from_pretrained(tmp_path / "exported")
    assert assert_samples_as_mf(pipe, load_model(tmp_path / "lora")[0], pipeline, 2) == 2


def test_a_full_student_of_a_pipeline_exports_a_pipeline_folder(cache, tmp_path, capsys):
    from mcm_fast.integrations.diffusers import MCMScheduler

    pipeline = cache.parent / "pipeline"
    train(config(cache, kind="cd", teacher=str(pipeline), steps=1, objective={"student_steps": 2,
                                                                             "teacher_steps": 8}),
          tmp_path / "full", progress=False)
    assert main(["export", "--ckpt", str(tmp_path / "full"), "--out", str(tmp_path / "pipe")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the folder loads as quietly as its teacher's (its scheduler/ is the teacher's)
        pipe = stock_pipeline(tmp_path / "pipe")
        pipe.scheduler = MCMScheduler.from_pretrained(tmp_path / "pipe")
    assert assert_samples_as_mf(pipe, load_model(tmp_path / "full")[0], pipeline, 2) == 2
    capsys.readouterr()
    assert main(["export", "--ckpt", str(tmp_path / "full"), "--out", str(tmp_path / "pipe")]) == 1
    assert "--out: " in capsys.readouterr().err


def test_lora_and_export_refuse_what_they_cannot_do_in_one_line(cache, runs, tmp_path, capsys):
    other = tiny_text_pipeline(tmp_path / "other", seed=1)
    capsys.readouterr()  # transformers' own progress bar while saving, outside the command line
    with pytest.raises(ConfigError, match=r"^teacher: the VAE or text encoders of .*other did not encode data.path"):
        train(config(cache, kind="cd", teacher=str(other), steps=1), tmp_path / "x", progress=False)
    train(load_config({"preset": "tiny-teacher", **RUN, "data": {"resolution": 8}, "steps": 1}), tmp_path / "uvit",
          progress=False)
    with pytest.raises(ConfigError, match=r"^lora_rank: a LoRA student adapts a diffusers network; .*got model 'tiny'"):
        train(load_config({"preset": "tiny-cd", **RUN, "teacher": str(tmp_path / "uvit"), "lora_rank": 2,
                           "data": {"resolution": 8}, "steps": 1}), tmp_path / "y", progress=False)
    with pytest.raises(ConfigError, match=r"^gradient_checkpointing: recomputes a diffusers network's blocks; "
                                          r"expected false for model 'tiny'"):
        train(load_config({"preset": "tiny-teacher", **RUN, "data": {"resolution": 8}, "steps": 1,
                           "gradient_checkpointing": True}), tmp_path / "w", progress=False)
    with pytest.raises(ConfigError, match=r"^lora_targets: .*nope"):
        train(config(cache, kind="cd", teacher=str(cache.parent / "pipeline"), lora_rank=2, lora_targets=["nope"],
                     steps=1), tmp_path / "v", progress=False)
    with pytest.raises(ConfigError, match=r"^lora_targets: expected list or None, got .to_q."):
        load_config({"lora_targets": "to_q"})
    with pytest.raises(ConfigError, match=r"^lora_rank: a LoRA student starts from the teacher it distills"):
        train(config(cache, kind="teacher", lora_rank=2, steps=1), tmp_path / "z", progress=False)
    for run, message in ((runs / "teacher", "--ckpt: a pipeline feeds its network diffusers' timesteps; expected a "
                                            "teacher trained with time_input native, got 'logsnr'"),
                         (tmp_path / "uvit", "--ckpt: a teacher exports as a text-to-image pipeline folder; expected "
                                             "a diffusers-unet2d-cond or diffusers-sd3 teacher of a latent cache")):
        assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "t")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def test_a_text_teacher_exports_as_the_pipeline_a_lora_student_distills(cache, tmp_path, capsys):
    """A teacher trained here on the cache (DDPM betas, native timesteps) exports as the encoding pipeline with its
    UNet and a DDPMScheduler: the stock pipeline loads it, as a teacher folder it is the same denoiser as the run,
    and a LoRA student takes it as its teacher (the cache is its own VAE's and text encoder's)."""
    from mcm_fast.integrations.pipelines import BETA_KEYS
    from mcm_fast.integrations.tiny import SCHEDULER

    on_betas = {"schedule": "discrete", "schedule_options": {k: SCHEDULER[k] for k in BETA_KEYS if k in SCHEDULER},
                "prediction": "eps", "time_input": "native"}
    train(config(cache, kind="teacher", steps=2, **on_betas), tmp_path / "teacher", progress=False)
    assert main(["export", "--ckpt", str(tmp_path / "teacher"), "--out", str(tmp_path / "pipe")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stock pipeline finds nothing to warn about in its scheduler
        pipe = stock_pipeline(tmp_path / "pipe")
    assert isinstance(pipe.scheduler, diffusers.DDPMScheduler) and pipe.scheduler.config.clip_sample is False
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.prediction_type == "epsilon"
    run, exported = load_model(tmp_path / "teacher")[0], load_model(tmp_path / "pipe")[0]
    z, t, text = torch.randn(3, 4, 8, 8), torch.tensor([0.05, 0.5, 0.97]), torch.randn(3, 8, 32)
    torch.testing.assert_close(exported(z, t, encoder_hidden_states=text), run(z, t, encoder_hidden_states=text),
                               rtol=0, atol=0)
    student = config(cache, kind="cd", teacher=str(tmp_path / "pipe"), lora_rank=2, steps=1,
                     objective={"student_steps": 4, "teacher_steps": 8})
    train(student, tmp_path / "lora", progress=False)
    assert main(["export", "--ckpt", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-out")]) == 0
    assert (tmp_path / "lora-out" / "pytorch_lora_weights.safetensors").is_file()


def test_the_documented_sd15_config_trains_on_the_tiny_pipeline(cache, tmp_path):
    """docs/configs/sd15-mcm-lora.yaml as a GPU user runs it, with only the pipeline, the cache and the sizes
    swapped for the tiny ones: a LoRA student with gradient checkpointing."""
    from pathlib import Path

    from mcm_fast.train.loop import Trainer

    doc = Path(__file__).resolve().parents[2] / "docs" / "configs" / "sd15-mcm-lora.yaml"
    cfg = load_config(str(doc), [f"teacher={cache.parent / 'pipeline'}", f"data.path={cache}", "steps=1",
                                 "cooldown=0", "optim.batch_size=16", "optim.warmup=0", "eval_samples=16",
                                 "save_every=0", "objective.teacher_steps=[8, 16, 10]"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.net.net.is_gradient_checkpointing and trainer.config.lora_rank == 64
    train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "step-000000001").is_dir()


def test_guidance_distilled_into_a_full_student_is_a_w_embedding_the_stock_pipeline_feeds(cache, tmp_path):
    """objective.guidance on a text UNet adds LCM's w embedding (time_cond_proj_dim, zero at the start: the student
    starts as its teacher at every w); the exported pipeline computes it from guidance_scale - 1 and makes one
    UNet call per step, giving mf.sample(guidance=w)'s latents."""
    from mcm_fast.integrations.diffusers import MCMScheduler
    from mcm_fast.models.diffusers_nets import guidance_embedding
    from mcm_fast.train.loop import Trainer

    pipeline = cache.parent / "pipeline"
    cfg = config(cache, kind="cd", teacher=str(pipeline), steps=2,
                 objective={"student_steps": 2, "teacher_steps": 8, "guidance": [1, 3]})
    trainer = Trainer(cfg, tmp_path / "guided", progress=False)
    assert trainer.net.net.config.time_cond_proj_dim == 256 and trainer.model.guidance_distilled
    z, t, text = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.7]), torch.randn(2, 8, 32)
    torch.testing.assert_close(trainer.model(z, t, encoder_hidden_states=text, guidance=torch.tensor([1.0, 3.0])),
                               trainer.teacher(z, t, encoder_hidden_states=text), rtol=0, atol=0)
    train(cfg, tmp_path / "guided", progress=False)
    assert main(["export", "--ckpt", str(tmp_path / "guided"), "--out", str(tmp_path / "pipe")]) == 0
    pipe = stock_pipeline(tmp_path / "pipe")
    pipe.scheduler = MCMScheduler.from_pretrained(tmp_path / "pipe")
    assert assert_samples_as_mf(pipe, load_model(tmp_path / "guided")[0], pipeline, 2, guidance=1.5, seed=4) == 2
    w = torch.tensor([0.0, 1.5, 4.0])
    reference = diffusers.StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256)
    torch.testing.assert_close(guidance_embedding(w, 256), reference, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"^objective.guidance: a LoRA file cannot carry the w embedding"):
        train(config(cache, kind="cd", teacher=str(pipeline), lora_rank=2, steps=1,
                     objective={"student_steps": 2, "teacher_steps": 8, "guidance": [1, 3]}), tmp_path / "x",
              progress=False)


def test_a_lora_student_of_a_teacher_run_saves_its_whole_network(cache, runs, tmp_path):
    """A teacher run (not a pipeline folder) has no folder to read the base from: its LoRA student's checkpoints
    hold the whole network, and reload."""
    from mcm_fast.train.checkpoint import load_checkpoint

    train(config(cache, kind="cd", teacher=str(runs / "teacher"), lora_rank=2, steps=1,
                 objective={"student_steps": 2, "teacher_steps": 8}), tmp_path / "lora", progress=False)
    checkpoint = load_checkpoint(tmp_path / "lora")
    assert "lora_base" not in checkpoint and any(".lora_" not in k for k in checkpoint["model"])
    assert isinstance(load_model(tmp_path / "lora")[0].net.net, diffusers.UNet2DConditionModel)


def test_a_lora_runs_checkpoints_hold_its_adapters_and_name_their_base(cache, tmp_path):
    """A LoRA run saves the adapters of its network and EMA (not the frozen base twice) with lora_base, the teacher
    folder and its network's sha256: it reloads to the trained EMA exactly, resumes as if never stopped, and a
    teacher whose weights changed since is refused in one line."""
    import shutil

    from mcm_fast.integrations.pipelines import UNET_WEIGHTS, network_digest
    from mcm_fast.train.checkpoint import load_checkpoint
    from mcm_fast.train.loop import Trainer

    pipeline = shutil.copytree(cache.parent / "pipeline", tmp_path / "pipeline")
    cfg = lambda steps: config(cache, kind="cd", teacher=str(pipeline), lora_rank=4, steps=steps,  # noqa: E731
                               objective={"student_steps": 2, "teacher_steps": 8})
    train(cfg(2), tmp_path / "once", progress=False)
    train(cfg(1), tmp_path / "twice", progress=False)
    train(cfg(2), tmp_path / "twice", progress=False)  # resumed at step 1
    checkpoint = load_checkpoint(tmp_path / "once")
    assert checkpoint["lora_base"] == {"teacher": str(pipeline), "weights_sha256": network_digest(pipeline)}
    assert set(checkpoint["ema"]) == set(checkpoint["model"]) and all(".lora_" in k for k in checkpoint["model"])
    saved = (checkpoint["path"] / "model.safetensors").stat().st_size
    assert saved < 0.2 * (pipeline / "unet" / UNET_WEIGHTS).stat().st_size
    resumed = load_checkpoint(tmp_path / "twice")
    for entry in ("model", "ema"):
        assert all(torch.equal(checkpoint[entry][k], resumed[entry][k]) for k in checkpoint[entry])
    trainer = Trainer(cfg(2), tmp_path / "once", progress=False)  # resumes at its end
    z, t, text = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8]), torch.randn(2, 8, 32)
    torch.testing.assert_close(load_model(tmp_path / "once")[0](z, t, encoder_hidden_states=text),
                               trainer.kind.wrap(trainer.ema)(z, t, encoder_hidden_states=text), rtol=0, atol=0)
    unet = diffusers.UNet2DConditionModel.from_pretrained(pipeline / "unet")
    with torch.no_grad():
        next(unet.parameters()).add_(1.0)
    unet.save_pretrained(pipeline / "unet", safe_serialization=True)
    with pytest.raises(ValueError, match=r"the LoRA run's base, the network of .*pipeline, is not the one it was "
                                         r"trained on"):
        load_model(tmp_path / "once")
    with pytest.raises(ConfigError, match=r"^teacher: the network of .*pipeline is not the base"):
        Trainer(cfg(3), tmp_path / "once", progress=False)
