"""Issue 34 through the command line: a latent cache of captioned MNIST (mcm-fast encode, the tiny pipeline) is a
run's data (data.name latents, 0.1 held out), a UNet2DConditionModel teacher trains on it with the prompts dropped
to the cache's empty prompt, a CD student distills it, both reload with that null prompt, sample grids decode
through the pipeline's VAE, eval scores decoded samples in FD-MNIST against held-out examples of the same
prompts, and guidance uses the empty prompt; mismatched models are one-line errors."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

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
