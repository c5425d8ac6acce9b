"""diffusers networks through the config and the training loop: a UNet2DModel (and a DiT) teacher trains, a CD
student distills from it, checkpoints reload (safetensors), and a diffusers pipeline folder is a teacher whose
student samples inside a diffusers pipeline with MCMScheduler."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import mcm_fast as mf  # noqa: E402
from mcm_fast.integrations.diffusers import MCMScheduler  # noqa: E402
from mcm_fast.train.build import load_model, make_kind, make_net  # noqa: E402
from mcm_fast.train.config import ConfigError, load_config  # noqa: E402
from mcm_fast.train.loop import train  # noqa: E402

UNET = {"layers_per_block": 1, "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8}
TINY = {"data": {"resolution": 8}, "optim": {"batch_size": 8, "warmup": 2}, "log_every": 1, "eval_samples": 8,
        "sample_steps": 2, "save_every": 0, "steps": 2}


def tiny(preset, **changes):
    return load_config({"preset": preset, **TINY, **changes})


def test_unet2d_teacher_and_cd_student_train_and_reload(tmp_path):
    network = {"model": "diffusers-unet2d", "model_options": UNET}
    train(tiny("tiny-teacher", **network), tmp_path / "teacher", progress=False)
    student = tiny("tiny-cd", teacher=str(tmp_path / "teacher"), objective={"student_steps": 2, "teacher_steps": 4},
                   **network)
    train(student, tmp_path / "cd", progress=False)
    assert not list((tmp_path / "cd").rglob("*.pt")) and list((tmp_path / "cd").rglob("*.safetensors"))
    model, kind, info = load_model(tmp_path / "cd")
    assert kind.config.model == "diffusers-unet2d" and isinstance(model.net.net, diffusers.UNet2DModel)
    x = mf.sample(model, 2, shape=(2, 1, 8, 8), label=torch.tensor([3, 10]))
    assert x.shape == (2, 1, 8, 8) and bool(torch.isfinite(x).all())


def test_flow_teacher_with_a_dit_trains(tmp_path):
    dit = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1, "patch_size": 2, "norm_num_groups": 4}
    config = tiny("tiny-teacher", model="diffusers-dit", model_options=dit, schedule="flow", prediction="flow",
                  time_input="native", steps=1)
    train(config, tmp_path / "dit", progress=False)
    model, kind, _ = load_model(tmp_path / "dit")
    assert isinstance(model.schedule, mf.FlowSchedule) and kind.config.prediction == "flow"


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A diffusers DDPM pipeline folder (save_pretrained): a class-conditional UNet2DModel, v-prediction."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=11, **UNET)
    scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    out = tmp_path_factory.mktemp("pipeline")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    return out


def test_a_diffusers_pipeline_is_a_teacher_and_its_student_samples_in_a_pipeline(tmp_path, pipeline_dir):
    teacher, kind, info = load_model(pipeline_dir)
    config = kind.config
    assert config.schedule == "discrete" and config.prediction == "v" and config.time_input == "native"
    assert info == {"shape": [1, 8, 8], "num_classes": 10}
    student = tiny("tiny-cd", teacher=str(pipeline_dir), objective={"student_steps": 2, "teacher_steps": 4})
    train(student, tmp_path / "cd", progress=False)
    model, kind, _ = load_model(tmp_path / "cd")
    assert isinstance(model.schedule, mf.DiscreteSchedule) and kind.config.model == "diffusers-unet2d"
    pipe = diffusers.DDPMPipeline.from_pretrained(pipeline_dir)  # the teacher's pipeline, the student's UNet
    pipe.unet = model.net.net
    pipe.scheduler = MCMScheduler.from_config(pipe.scheduler.config)
    label = torch.full((2,), 10)  # the null class (DDPMPipeline's own loop passes no labels: this is that loop)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    pipe.scheduler.set_timesteps(2)
    z = noise
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            z = pipe.scheduler.step(pipe.unet(z, t, class_labels=label).sample, t, z).prev_sample
    torch.testing.assert_close(z, mf.sample(model, 2, noise=noise, label=label), rtol=1e-5, atol=1e-5)


def test_bad_diffusers_configs_name_the_key(tmp_path, pipeline_dir):
    with pytest.raises(ConfigError, match="^model_options: "):
        train(tiny("tiny-teacher", model="diffusers-unet2d", model_options={"block_out_channels": "wide"}),
              tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="^model: 'diffusers-unet2d' needs \\[C, H, W\\]"):
        train(load_config("ring-teacher", {"model": "diffusers-unet2d", "steps": 1}), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="^time_input: a student starts from its teacher's network"):
        teacher = tmp_path / "t"
        train(tiny("tiny-teacher", steps=1), teacher, progress=False)
        train(tiny("tiny-cd", teacher=str(teacher), time_input="t"), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="^data.resolution|^teacher: trained on data"):
        train(tiny("tiny-cd", teacher=str(pipeline_dir), data={"resolution": 16}), tmp_path / "d", progress=False)
    assert json.loads((pipeline_dir / "unet" / "config.json").read_text())["num_class_embeds"] == 11
    multi = tiny("tiny-cd", teacher=str(pipeline_dir), model="diffusers-unet2d", model_options=UNET,
                 objective={"student_steps": [1, 2]})
    with pytest.raises(ConfigError, match="^objective.student_steps: a student of several step counts"):
        make_net(make_kind(multi, 10), (1, 8, 8), 10)


def pipeline_copy(pipeline_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(pipeline_dir, tmp_path / "pipeline"))


def test_a_pipeline_with_pickled_weights_only_is_refused_with_how_to_convert(tmp_path, pipeline_dir):
    folder = pipeline_copy(pipeline_dir, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle, never read")
    with pytest.raises(ValueError, match=r"^teacher: .*unet holds diffusion_pytorch_model.bin \(a pickle\) and no "
                                         r"diffusion_pytorch_model.safetensors; .*save_pretrained"):
        load_model(folder)
    (folder / "unet" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=f"^teacher: no {weights}"):
        load_model(folder)


def test_a_pipeline_folder_without_a_scheduler_says_so(tmp_path, pipeline_dir):
    folder = pipeline_copy(pipeline_dir, tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="looks like a diffusers pipeline folder .* no "
                                                "scheduler/scheduler_config.json"):
        load_model(folder)


def test_a_pipeline_teacher_run_prints_only_our_lines_on_stderr(tmp_path, pipeline_dir):
    """diffusers' own logging (accelerate's 5-line notice, unsafe serialization) stays out of the CLI's stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DIFFUSERS_VERBOSITY", None)
    command = [sys.executable, "-m", "mcm_fast", "train", "--config", "tiny-cd", "--out", str(tmp_path / "cd"),
               "--no-progress", "--set", f"teacher={pipeline_dir}", "--set", "steps=1", "--set", "eval_samples=8",
               "--set", "data.resolution=8", "--set", "optim.batch_size=8", "--set", "sample_steps=2",
               "--set", "objective.student_steps=2", "--set", "objective.teacher_steps=4"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("mcm-fast train: ") for line in result.stderr.splitlines()), result.stderr
