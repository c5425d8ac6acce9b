"""mcm_fast.integrations.diffusers against diffusers itself: the package's DDIM on teacher_from_diffusers equals a
diffusers DDIM loop, a pipeline with MCMScheduler (ADDIMScheduler) equals mf.sample (mf.sample_diffusion), and
the schedulers round-trip through save_pretrained/from_pretrained. Tiny random networks, nothing downloaded."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import mcm_fast as mf  # noqa: E402
from mcm_fast.integrations.diffusers import ADDIMScheduler, MCMScheduler, teacher_from_diffusers  # noqa: E402

PREDICTIONS = ["epsilon", "v_prediction"]


def tiny_unet(seed=0, **changes):
    torch.manual_seed(seed)
    config = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  norm_num_groups=4, attention_head_dim=8)
    return diffusers.UNet2DModel(**{**config, **changes}).double().eval()


def noise(seed=1, batch=3):
    return torch.randn(batch, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_package_ddim_on_a_diffusers_teacher_equals_a_diffusers_ddim_loop(prediction_type):
    unet = tiny_unet()
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing",
                                        prediction_type=prediction_type)
    # diffusers keeps alphas_cumprod in float32 and takes its square roots there: float64 for a float64 comparison
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]  # the last step lands on timestep 0, as ours
    scheduler.set_timesteps(10)
    z = noise()
    with torch.no_grad():
        for t in scheduler.timesteps:
            z = scheduler.step(unet(z, t).sample, t, z).prev_sample
    teacher = teacher_from_diffusers(unet, scheduler)
    grid = [*(scheduler.timesteps.double() / 999).tolist(), 0.0]
    ours = mf.sample_diffusion(teacher, 10, "ddim", noise=noise(), grid=grid)
    torch.testing.assert_close(ours, z, rtol=1e-10, atol=1e-10)


def run_pipeline(unet, scheduler, steps, seed=2):
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=3, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                  output_type="np").images  # [B, H, W, C], (x / 2 + 0.5) clamped to [0, 1]
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def as_pipeline_images(x):
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("boundaries", ["t", "logsnr"])
def test_pipeline_with_mcm_scheduler_equals_mf_sample(prediction_type, boundaries):
    student = tiny_unet(seed=3)
    scheduler = MCMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, boundaries=boundaries)
    images = run_pipeline(student, scheduler, 4)
    model = teacher_from_diffusers(student, scheduler)  # a student from a diffusers teacher is wrapped alike
    x = mf.sample(model, 4, noise=noise(seed=2), boundaries=boundaries)
    torch.testing.assert_close(images, as_pipeline_images(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("x_var", ["analytic", 0.02, "table"])
def test_pipeline_with_addim_scheduler_equals_mf_sample_diffusion(x_var):
    unet = tiny_unet(seed=4)
    if x_var == "table":
        x_var = mf.XVarTable(torch.linspace(0, 1, 5, dtype=torch.float64), torch.tensor([0.0, 0.01, 0.05, 0.2, 0.3]))
    scheduler = ADDIMScheduler(prediction_type="v_prediction", x_var=x_var, grid="logsnr")
    images = run_pipeline(unet, scheduler, 6)
    z = mf.sample_diffusion(teacher_from_diffusers(unet, scheduler), 6, "addim", noise=noise(seed=2), x_var=x_var,
                            grid="logsnr")
    torch.testing.assert_close(images, as_pipeline_images(z), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", [
    lambda: MCMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", boundaries="logsnr"),
    lambda: ADDIMScheduler(trained_betas=torch.linspace(1e-4, 0.03, 50).tolist(), grid="edm", x_var=0.05),
    lambda: ADDIMScheduler(x_var=mf.XVarTable(torch.tensor([0.0, 1.0]), torch.tensor([0.01, 0.3]))),
])
def test_schedulers_round_trip_through_save_and_load(tmp_path, make):
    scheduler = make()
    scheduler.save_pretrained(tmp_path)
    loaded = type(scheduler).from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    for s in (scheduler, loaded):
        s.set_timesteps(3)
    assert torch.equal(loaded.timesteps, scheduler.timesteps)
    z, out = noise(5), noise(6)
    t = scheduler.timesteps[1]
    assert torch.equal(loaded.step(out, t, z).prev_sample, scheduler.step(out, t, z).prev_sample)


def test_from_config_of_a_diffusers_scheduler_takes_its_schedule():
    ddpm = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    scheduler = MCMScheduler.from_config(ddpm.config)
    assert scheduler.prediction_type == "v_prediction"
    torch.testing.assert_close(scheduler.alphas_cumprod, ddpm.alphas_cumprod.double(), rtol=0, atol=0)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="prediction_type: expected one of"):
        MCMScheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="boundaries: expected one of"):
        MCMScheduler(boundaries="edm")
    with pytest.raises(ValueError, match="grid: expected one of"):
        ADDIMScheduler(grid="karras")
    with pytest.raises(ValueError, match="x_var: expected"):
        ADDIMScheduler(x_var=-1.0)
    with pytest.raises(ValueError, match="beta_schedule: expected"):
        MCMScheduler(beta_schedule="cubic")
    scheduler = MCMScheduler()
    with pytest.raises(ValueError, match="timestep: call set_timesteps"):
        scheduler.step(noise(), 999, noise())
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="timestep: expected one of the scheduler's timesteps"):
        scheduler.step(noise(), 998, noise())
    with pytest.raises(ValueError, match="eta: expected 0"):
        scheduler.step(noise(), scheduler.timesteps[0], noise(), eta=0.5)
    with pytest.raises(ValueError, match="num_inference_steps: expected"):
        scheduler.set_timesteps(0)
    with pytest.raises(TypeError, match="unet: expected a diffusers model"):
        teacher_from_diffusers(lambda z, t: z, scheduler)
    with pytest.raises(TypeError, match="scheduler: expected a diffusers scheduler"):
        teacher_from_diffusers(tiny_unet(), "ddim")
