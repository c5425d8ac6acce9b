"""LoRA students (issue 34) on the tiny Stable-Diffusion-style pipeline: the student is the teacher's UNet with
adapters and the teacher the same network with them off (one copy of the base weights, the teacher's output
exactly the base UNet's), Algorithm 1 trains the adapters only, and the exported LoRA with its MCMScheduler makes
a stock StableDiffusionPipeline sample in S UNet calls exactly what mf.sample gives from the same noise and prompt."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from stock_pipeline import assert_samples_as_mf, stock_pipeline  # noqa: E402

import mcm_fast as mf  # noqa: E402
from mcm_fast.denoiser import Denoiser  # noqa: E402
from mcm_fast.integrations.diffusers import MCMScheduler, teacher_from_diffusers  # noqa: E402
from mcm_fast.integrations.lora import LCM_TARGETS, TARGETS, AdaptersOff, add_lora, export_lora, lora_parameters  # noqa: E402
from mcm_fast.integrations.tiny import tiny_text_pipeline  # noqa: E402
from mcm_fast.models.diffusers_nets import DiffusersNet  # noqa: E402


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_text_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline", prediction_type="v_prediction")


def lora_student(pipeline_dir, rank=4, alpha=None, seed=0, targets=TARGETS):
    """(base teacher model, student model, teacher model over the student's network): the LoRA weights random
    (B is zero at the start), so that the student differs from its teacher."""
    pipe = stock_pipeline(pipeline_dir)
    base = teacher_from_diffusers(pipe.unet, pipe.scheduler)
    reference = teacher_from_diffusers(stock_pipeline(pipeline_dir).unet, pipe.scheduler)  # a copy without adapters
    net = add_lora(base.net, rank, alpha, targets)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(net).values():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    teacher = Denoiser(AdaptersOff(net), base.schedule, base.prediction, time_input="native")
    return reference, base, teacher, pipe


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 8, 8, generator=g), torch.rand(3, generator=g) * 0.9 + 0.05, torch.randn(3, 8, 32,
                                                                                                      generator=g)


def test_the_teacher_is_the_students_network_with_its_adapters_off(pipeline_dir):
    reference, student, teacher, _ = lora_student(pipeline_dir)
    z, t, text = inputs()
    expected = reference(z, t, encoder_hidden_states=text)
    torch.testing.assert_close(teacher(z, t, encoder_hidden_states=text), expected, rtol=0, atol=0)
    assert (student(z, t, encoder_hidden_states=text) - expected).abs().max() > 1e-2
    torch.testing.assert_close(teacher(z, t, encoder_hidden_states=text), expected, rtol=0, atol=0)  # back on
    assert list(teacher.parameters()) == []  # it calls the student's network; it holds none of its own
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    assert trainable == {f"net.{name}" for name in lora_parameters(student.net)} and trainable
    base_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())
    held = {p.data_ptr(): p.numel() * p.element_size() for m in (student, teacher) for p in m.parameters()}
    lora_bytes = sum(p.numel() * p.element_size() for p in lora_parameters(student.net).values())
    assert sum(held.values()) == base_bytes + lora_bytes  # one copy of the base weights, not two


def test_a_fresh_lora_student_starts_as_its_teacher(pipeline_dir):
    pipe = stock_pipeline(pipeline_dir)
    model = teacher_from_diffusers(pipe.unet, pipe.scheduler)
    z, t, text = inputs(1)
    before = model(z, t, encoder_hidden_states=text)
    add_lora(model.net, rank=2)
    torch.testing.assert_close(model(z, t, encoder_hidden_states=text), before, rtol=0, atol=0)


def test_algorithm_1_trains_the_adapters_only(pipeline_dir):
    _, student, teacher, _ = lora_student(pipeline_dir)
    objective = mf.MCMObjective(student.schedule, student_steps=4, teacher_steps=8)
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    text = torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(3))
    loss = objective(student, x, teacher, 0, torch.Generator().manual_seed(4), encoder_hidden_states=text)
    loss.backward()
    assert torch.isfinite(loss)
    lora = lora_parameters(student.net)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora.values())
    assert any(p.grad.abs().max() > 0 for p in lora.values())
    assert all(p.grad is None for name, p in student.net.named_parameters() if name not in lora)


@pytest.mark.parametrize("steps, rank, alpha, targets", [(4, 4, None, TARGETS), (2, 2, 6.0, TARGETS),
                                                         (2, 3, None, LCM_TARGETS)])
def test_the_exported_lora_samples_in_a_stock_pipeline_as_mf_sample_does(pipeline_dir, tmp_path, steps, rank, alpha,
                                                                         targets):
    """pipe.load_lora_weights + MCMScheduler.from_pretrained: S UNet calls, the same latents as mf.sample (the
    prompt encoded by the pipeline's own text encoder; guidance_scale=1: no classifier-free guidance), with the
    LoRA's scale alpha / rank kept in the export's metadata; LCM-LoRA's targets (convolutions, feed-forwards, the
    time projection) load as well."""
    _, student, _, pipe = lora_student(pipeline_dir, rank, alpha, targets=targets)
    adapted = {name.split(".lora_")[0] for name in lora_parameters(student.net)}
    assert any(name.endswith("conv1") for name in adapted) == (targets == LCM_TARGETS)
    out = export_lora(student.net, tmp_path / "lora", pipe.scheduler.config)
    assert sorted(p.name for p in out.iterdir()) == ["pytorch_lora_weights.safetensors", "scheduler_config.json"]
    fresh = stock_pipeline(pipeline_dir)
    fresh.load_lora_weights(out)
    fresh.scheduler = MCMScheduler.from_pretrained(out)
    assert assert_samples_as_mf(fresh, student, pipeline_dir, steps) == steps


def test_bad_lora_calls_are_one_line_errors(pipeline_dir, tmp_path):
    pipe = stock_pipeline(pipeline_dir)
    with pytest.raises(TypeError, match="net: expected a DiffusersNet"):
        add_lora(pipe.unet, 4)
    with pytest.raises(ValueError, match="rank: expected"):
        add_lora(DiffusersNet(pipe.unet), 0)
    with pytest.raises(ValueError, match="net: has no LoRA adapters"):
        export_lora(DiffusersNet(pipe.unet), tmp_path / "x", pipe.scheduler.config)
    with pytest.raises(ValueError, match="^targets: "):
        add_lora(DiffusersNet(stock_pipeline(pipeline_dir).unet), 4, targets=("no_such_module",))
