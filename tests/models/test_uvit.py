"""The UViT: the paper's parameter counts (vs a count from the layer sizes), shapes, zero-initialized output,
gradient flow, class conditioning, dropout modes, attention backends, input checks, and use in a Denoiser."""
import dataclasses

import pytest
import torch

import mcm_fast as mf
from mcm_fast.models import UVIT_PRESETS, UViT, UViTConfig, count_parameters, uvit
from parity import backend_device

PAPER = {"in64-small": 394e6, "in64-large": 1.23e9}


def expected_parameters(c: UViTConfig) -> int:
    """Weights and biases of each layer, summed from the config's sizes (the norms inside blocks have no affine)."""
    e = c.emb_channels

    def linear(i, o):
        return i * o + o

    def conv(i, o, k):
        return i * o * k * k + o

    def resblock(ch):  # GroupNorm, conv, FiLM, conv
        return 2 * ch + 2 * conv(ch, ch, 3) + linear(e, 2 * ch)

    def transformer(ch):  # adaLN, qkv, projection, MLP
        return (linear(e, 4 * ch) + linear(ch, 3 * ch) + linear(ch, ch) + linear(ch, c.mlp_ratio * ch)
                + linear(c.mlp_ratio * ch, ch))

    total = linear(c.fourier_features, e) + linear(e, e) + (c.num_classes + 1) * e * (c.num_classes > 0)
    widths = [level[1] for level in c.levels]
    total += conv(c.in_channels, widths[0], 3) + 2 * widths[0] + conv(widths[0], c.in_channels, 3)  # in, norm, out
    for (kind, ch, blocks, *_), lower in zip(c.levels, widths[1:] + [c.middle_channels]):
        block = resblock(ch) if kind == "resnet" else transformer(ch)
        total += 2 * blocks * block + blocks * linear(2 * ch, ch)  # down and up blocks, skip projections
        total += (conv(ch, lower, 1) + conv(lower, ch, 1)) * (ch != lower)  # width changes down and up
    return total + c.middle_blocks * transformer(c.middle_channels)


@pytest.mark.parametrize("name", ["in64-small", "in64-large"])
def test_paper_parameter_counts(name):
    with torch.device("meta"):
        net = uvit(name)
        out = net(torch.empty(2, 3, 64, 64), torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 3, 64, 64) and out.device.type == "meta"
    n = count_parameters(net)
    expected = expected_parameters(net.config)
    assert n == expected, f"{name}: {n} parameters, the layer sizes give {expected}"
    assert abs(n / PAPER[name] - 1) < 0.1, (
        f"{name}: {n / 1e6:.1f}M parameters, the paper states {PAPER[name] / 1e6:.0f}M")


def test_paper_presets_follow_the_paper():
    small, large = UVIT_PRESETS["in64-small"], UVIT_PRESETS["in64-large"]
    assert small.levels == (("resnet", 256, 3), ("transformer", 512, 3))
    assert (small.middle_channels, small.middle_blocks, small.mlp_ratio, small.middle_dropout) == (1024, 16, 4, 0.2)
    assert large.levels == (("resnet", 512, 3), ("transformer", 1024, 3, 0.1)) and large.dropout == 0.0
    assert (large.middle_channels, large.middle_blocks, large.middle_dropout) == (2048, 16, 0.1)


def perturbed(name, **overrides):
    """A preset with its zero-initialized output conv made random, so the output depends on everything."""
    torch.manual_seed(0)
    net = uvit(name, **overrides)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


def test_small_presets_forward_shape_and_zero_output():
    g = torch.Generator().manual_seed(0)
    for name, res in (("tiny", 16), ("tiny-res", 16), ("mnist", 32)):
        net = uvit(name)
        assert count_parameters(net) == expected_parameters(net.config), name
        z = torch.randn(2, 1, res, res, generator=g)
        out = net(z, torch.tensor([-10.0, 5.0]), torch.tensor([3, 10]))
        assert out.shape == z.shape and out.dtype == z.dtype, f"{name}: {out.shape} {out.dtype}"
        assert torch.equal(out, torch.zeros_like(z)), f"{name}: the initial output is not 0"


def test_the_tiny_res_preset_is_the_backbone_study_s_best_teacher():
    """The preset is experiments/backbone.py's uvit-res32x2, whose scores docs/results.md reports."""
    from experiments.backbone import BACKBONES

    study = uvit("tiny", **{k: tuple(map(tuple, v)) if k == "levels" else v
                            for k, v in BACKBONES["uvit-res32x2"]["model_options"].items()})
    assert study.config == UVIT_PRESETS["tiny-res"] and count_parameters(study) == 587_393


def test_gradients_reach_every_parameter():
    net = perturbed("tiny", levels=(("resnet", 16, 1), ("transformer", 32, 1)), head_dim=16)
    z = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    net(z, torch.linspace(-10, 10, 4), torch.tensor([0, 1, 2, 10])).square().mean().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_labels_condition_the_output():
    net = perturbed("tiny")
    z, logsnr = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2)), torch.zeros(3)
    a, b = net(z, logsnr, torch.tensor([1, 2, 3])), net(z, logsnr, torch.tensor([4, 2, 3]))
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1:], b[1:]), "label: sample 0 alone should change"
    torch.testing.assert_close(net(z, logsnr), net(z, logsnr, torch.full((3,), 10)),
                               msg=lambda m: f"label=None vs null: {m}")
    assert not torch.allclose(net(z, logsnr + 1), net(z, logsnr)), "logsnr: does not change the output"


def test_dropout_only_in_train_mode():
    net = perturbed("tiny", dropout=0.3)
    z, logsnr = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)), torch.zeros(2)
    net.eval()
    assert torch.equal(net(z, logsnr), net(z, logsnr)), "eval mode: not deterministic"
    net.train()
    assert not torch.equal(net(z, logsnr), net(z, logsnr)), "train mode: dropout=0.3 changes nothing"


def test_middle_and_level_dropout():
    net = uvit("in64-large", levels=(("resnet", 16, 1, 0.0), ("transformer", 32, 1, 0.1)), middle_channels=64,
               middle_blocks=1, emb_channels=32, head_dim=16, dropout=0.3, middle_dropout=0.2)
    blocks = (*net.down[0], *net.down[1], *net.middle, *net.up[1], *net.up[0])
    assert [b.dropout.p for b in blocks] == [0.0, 0.1, 0.2, 0.1, 0.0]
    assert all(m.p == 0.3 for m in uvit("tiny", dropout=0.3).modules() if isinstance(m, torch.nn.Dropout))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_attention_backends_agree(dtype):
    """The whole UViT, forward and backward (every parameter's gradient), on each attention backend vs the
    reference, within the dtype's tolerance."""
    results = {}
    for backend in mf.available_backends("attention"):
        device = backend_device(backend)  # each backend on its device: Triton on a GPU where there is one
        net = perturbed("tiny", levels=(("resnet", 16, 1), ("transformer", 32, 1)), head_dim=32,
                        attention_backend=backend).to(device, dtype)
        z = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)).to(device, dtype)
        out = net(z, torch.tensor([-3.0, 3.0], device=device), torch.tensor([0, 9], device=device))
        out.float().square().sum().backward()
        results[backend] = [out.cpu()] + [p.grad.cpu() for p in net.parameters()]
    rel = 1e-4 if dtype == torch.float32 else 5e-2  # of each tensor's largest value
    for backend, values in results.items():
        for i, (got, want) in enumerate(zip(values, results["reference"])):
            name = "output" if i == 0 else f"parameter {i - 1} gradient"
            torch.testing.assert_close(got.float(), want.float(), rtol=rel, atol=rel * want.abs().max().item(),
                                       msg=lambda m, n=name, b=backend: f"{b} UViT {n}: {m}")


def test_computes_in_the_input_dtype():
    net = perturbed("tiny").to(torch.bfloat16)
    z = torch.randn(2, 1, 8, 8, dtype=torch.bfloat16)
    out = net(z, torch.zeros(2), torch.tensor([0, 1]))  # any resolution divisible by 4
    assert out.dtype == torch.bfloat16 and out.shape == z.shape and torch.isfinite(out).all()


def test_through_a_denoiser():
    net = uvit("tiny")
    den = mf.Denoiser(net, mf.CosineSchedule(), prediction="v")
    z, t = torch.randn(3, 1, 16, 16), torch.tensor([0.2, 0.5, 0.9])
    alpha, _ = mf.CosineSchedule().alpha_sigma(t)
    x_hat = den(z, t, label=torch.tensor([1, 2, 10]))
    torch.testing.assert_close(x_hat, alpha.float()[:, None, None, None] * z, msg=lambda m: f"x_hat with v = 0: {m}")
    assert mf.sample(den, 2, shape=(2, 1, 16, 16), label=torch.tensor([0, 1])).shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    "z,logsnr,label,error,match",
    [
        ((2, 3, 16, 16), (2,), None, ValueError, r"z: expected \[B, 1, H, W\] with H and W divisible by 4"),
        ((2, 1, 18, 16), (2,), None, ValueError, r"z: expected \[B, 1, H, W\] with H and W divisible by 4"),
        ((2, 1, 16), (2,), None, ValueError, r"z: expected \[B, 1, H, W\]"),
        ((2, 1, 16, 16), (3,), None, ValueError, r"logsnr: expected shape \[2\]"),
        ((2, 1, 16, 16), (2,), [0, 11], ValueError, r"label: expected classes in \[0, 10\]"),
        ((2, 1, 16, 16), (2,), [-1, 0], ValueError, r"label: expected classes in \[0, 10\]"),
        ((2, 1, 16, 16), (2,), [0, 1, 2], ValueError, r"label: expected shape \[2\]"),
        ((2, 1, 16, 16), (2,), [0.0, 1.0], TypeError, r"label: expected an int64 or int32 tensor"),
    ],
)
def test_bad_inputs_name_the_argument(z, logsnr, label, error, match):
    net = uvit("tiny")
    label = None if label is None else torch.tensor(label)
    with pytest.raises(error, match=match):
        net(torch.randn(z), torch.randn(logsnr), label)


def test_label_on_an_unconditional_model():
    with pytest.raises(ValueError, match="label: expected None for an unconditional UViT"):
        uvit("tiny", num_classes=0)(torch.randn(1, 1, 16, 16), torch.zeros(1), torch.tensor([0]))


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        ({"head_dim": 48}, ValueError, "middle_channels: transformer channels must be divisible by head_dim=48"),
        ({"levels": (("resnet", 16, 1), ("transformer", 40, 1)), "head_dim": 16}, ValueError,
         "levels: transformer channels"),
        ({"levels": (("conv", 16, 1),)}, ValueError, "levels: expected .kind, channels, blocks"),
        ({"levels": ()}, ValueError, "levels: expected at least one"),
        ({"middle_dropout": 1.0}, ValueError, "middle_dropout: expected a dropout probability"),
        ({"emb_channels": 0}, ValueError, "emb_channels: expected an integer >= 1"),
        ({"attention_backend": "flash"}, ValueError, "attention_backend: expected one of"),
        ({"width": 3}, TypeError, "overrides: unknown UViTConfig field.s. width"),
    ],
)
def test_bad_configs_name_the_field(overrides, error, match):
    with pytest.raises(error, match=match):
        uvit("tiny", **overrides)


def test_constructors():
    with pytest.raises(ValueError, match="name_or_config: expected one of"):
        uvit("huge")
    with pytest.raises(TypeError, match="config: expected a UViTConfig"):
        UViT({"in_channels": 1})
    config = dataclasses.replace(UVIT_PRESETS["tiny"], levels=[["resnet", 16, 1], ["resnet", 32, 1]])  # as from JSON
    assert config == UVIT_PRESETS["tiny"] and uvit(config).config == config


def test_traces_without_graph_breaks():
    torch._dynamo.reset()
    net = perturbed("tiny", levels=(("resnet", 16, 1), ("transformer", 32, 1)), head_dim=16)
    z, logsnr, label = torch.randn(2, 1, 16, 16), torch.zeros(2), torch.tensor([0, 1])
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(z, logsnr, label), net(z, logsnr, label))
