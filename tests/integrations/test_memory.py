"""The memory estimate of a distillation run (issue 34): the saved activations counted on the meta device against
hand-counted networks, attention counted as flash attention keeps it, the parameters and LoRA's trainable ones
against the real networks, and `mcm-fast memory` on a pipeline folder's config files."""
import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from mcm_fast.cli import main  # noqa: E402
from mcm_fast.integrations.lora import add_lora, lora_parameters  # noqa: E402
from mcm_fast.integrations.memory import GIB, activation_bytes, training_memory, unet_inputs  # noqa: E402
from mcm_fast.integrations.tiny import UNET, tiny_sd3_pipeline, tiny_sdxl_pipeline, tiny_text_pipeline  # noqa: E402
from mcm_fast.models.diffusers_nets import DiffusersNet  # noqa: E402

CONFIG = {**UNET, "cross_attention_dim": 32}


class MLP(torch.nn.Module):
    def __init__(self, d=5, h=7, o=3):
        super().__init__()
        self.first, self.second = torch.nn.Linear(d, h), torch.nn.Linear(h, o)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q * self.scale, k, v)


def test_saved_activations_are_counted_once_each():
    """Linear saves its input, ReLU its output, which the second Linear saves again as its input: B (d + h)."""
    with torch.device("meta"):
        net = MLP()
        assert activation_bytes(net, {"x": torch.empty(11, 5)}) == 11 * (5 + 7) * 4
        assert activation_bytes(net.to(torch.bfloat16), {"x": torch.empty(11, 5, dtype=torch.bfloat16)}) == 11 * 12 * 2


def test_attention_is_counted_as_flash_attention_keeps_it():
    """q * scale (and k, v: inputs), the output and a float32 log-sum-exp per row; not the N x N weights (a 4096-
    token attention would be 4096^2 per head), and the multiply's saved q."""
    b, h, n, d = 2, 3, 4096, 16
    with torch.device("meta"):
        q, k, v = (torch.empty(b, h, n, d) for _ in range(3))
        got = activation_bytes(Attention(), {"q": q, "k": k, "v": v})
    assert got == (5 * b * h * n * d + b * h * n) * 4
    assert F.scaled_dot_product_attention is torch.nn.functional.scaled_dot_product_attention  # restored


def test_the_estimate_counts_the_real_networks_parameters():
    real = DiffusersNet(diffusers.UNet2DConditionModel(**CONFIG))
    base = sum(p.numel() for p in real.parameters())
    lora = training_memory(diffusers.UNet2DConditionModel, CONFIG, unet_inputs(CONFIG, 8), batch=4, lora_rank=4)
    add_lora(real, 4)
    trainable = sum(p.numel() for p in lora_parameters(real).values())
    assert lora["parameters (M)"] * 1e6 == pytest.approx(base)
    assert lora["trainable (M)"] * 1e6 == pytest.approx(trainable)
    assert lora["gradients"] * GIB == trainable * 4 and lora["AdamW moments"] * GIB == trainable * 8
    assert lora["weights"] * GIB == base * 4 + trainable * 4  # one base, shared by the teacher and the EMA
    full = training_memory(diffusers.UNet2DConditionModel, CONFIG, unet_inputs(CONFIG, 8), batch=4)
    assert full["weights"] * GIB == 3 * base * 4 and full["gradients"] * GIB == base * 4
    checkpointed = training_memory(diffusers.UNet2DConditionModel, CONFIG, unet_inputs(CONFIG, 8), batch=4,
                                   lora_rank=4, checkpointing=True)
    assert 0 < checkpointed["activations"] < lora["activations"]
    double = training_memory(diffusers.UNet2DConditionModel, CONFIG, unet_inputs(CONFIG, 8), batch=8, lora_rank=4)
    assert double["activations"] == pytest.approx(2 * lora["activations"], rel=0.01)
    with pytest.raises(ValueError, match="precision: expected one of"):
        training_memory(diffusers.UNet2DConditionModel, CONFIG, unet_inputs(CONFIG, 8), batch=4, precision="fp16")


def test_cli_estimates_a_pipeline_folder(tmp_path, capsys):
    pipeline = tiny_text_pipeline(tmp_path / "pipe")
    capsys.readouterr()
    assert main(["memory", "--pipeline", str(pipeline), "--batch", "16", "--lora-rank", "4", "--checkpointing"]) == 0
    out = capsys.readouterr().out
    assert "UNet2DConditionModel, LoRA rank 4, batch 16 per GPU, bf16, gradient checkpointing" in out
    assert "activations" in out and "total" in out
    assert main(["memory", "--pipeline", str(tmp_path), "--batch", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--pipeline: no " in err
    sd3 = tiny_sd3_pipeline(tmp_path / "sd3")
    capsys.readouterr()
    assert main(["memory", "--pipeline", str(sd3), "--batch", "2", "--lora-rank", "4"]) == 0
    assert "SD3Transformer2DModel, LoRA rank 4, batch 2 per GPU" in capsys.readouterr().out
    sdxl = tiny_sdxl_pipeline(tmp_path / "sdxl")  # its UNet's added text_embeds and time_ids
    capsys.readouterr()
    assert main(["memory", "--pipeline", str(sdxl), "--batch", "2"]) == 0
    assert "UNet2DConditionModel, full student" in capsys.readouterr().out
