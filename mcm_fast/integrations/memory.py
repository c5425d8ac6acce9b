"""What distilling a diffusers network costs in memory (issue 34), computed from its config rather than guessed.

The network is built on PyTorch's meta device (shapes, no storage: an SD 1.5 UNet in a fraction of a second, on
any machine), so its parameters are counted exactly; one student forward at the batch runs on meta tensors with
every tensor that autograd saves for the backward recorded (each once), which is the activation memory of the
training step (the teacher's and the target's forwards run without gradients and save nothing). Attention is
counted as flash attention stores it (q, k, v, the output and a log-sum-exp per row), not as the math path's
N x N weights, since that is what a GPU runs. What the estimate leaves out: the allocator's fragmentation and
the transient peaks inside one op, the CUDA context (about 0.5 GiB), the text encoder and VAE (the latent cache
keeps them out of training).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from mcm_fast._checks import check_int

GIB = 2**30
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _FlashAttention(torch.autograd.Function):
    """scaled_dot_product_attention's shapes, saving what flash attention keeps for its backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the estimate needs the forward's saved tensors only
        raise NotImplementedError


@contextlib.contextmanager
def _flash_attention():
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *args, **kwargs: _FlashAttention.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def activation_bytes(net: torch.nn.Module, inputs: dict) -> int:
    """The bytes of the tensors autograd saves for the backward of net(**inputs) (meta tensors): each tensor a
    saved one views counted once, the parameters (and views of them, as a Linear's transposed weight) not."""
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor):
        root = tensor if tensor._base is None else tensor._base
        saved.setdefault(id(root), root)  # kept alive, so that no two tensors share an id
        return tensor

    with _flash_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(**inputs)
    params = {id(p) for p in net.parameters()}
    return sum(t.numel() * t.element_size() for key, t in saved.items() if key not in params)


def training_memory(model_class, config: dict, inputs, batch: int, lora_rank: int | None = None,
                    precision: str = "bf16", checkpointing: bool = False) -> dict[str, float]:
    """GiB of a distillation run of the diffusers model_class(**config) at this batch (per GPU), by part:
    the base weights (one copy: the student's, which a LoRA student's teacher and EMA share; a full student adds a
    teacher and an EMA copy), the trainable weights' gradients, AdamW's two moments and the EMA (fp32), and the
    activations of one student forward (in precision; gradient checkpointing saves the blocks' inputs only).
    inputs(batch, dtype) -> the forward's keyword arguments (meta tensors)."""
    check_int("batch", batch, 1)
    if precision not in DTYPES:
        raise ValueError(f"precision: expected one of {tuple(DTYPES)}, got {precision!r}")
    dtype = DTYPES[precision]
    with torch.device("meta"):
        net = model_class(**config)
    if checkpointing:
        net.enable_gradient_checkpointing()
    base = sum(p.numel() for p in net.parameters())
    if lora_rank is not None:
        from mcm_fast.integrations.lora import TARGETS, import_peft

        net.requires_grad_(False)
        net.add_adapter(import_peft().LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(TARGETS)))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    torch.nn.Module.to(net, dtype).train()  # (diffusers' own .to warns about keeping modules in fp32)
    with torch.device("meta"):
        activations = activation_bytes(net, inputs(batch, dtype))
    weights = base * 4 * (1 if lora_rank is not None else 3)  # fp32 weights: student (+ teacher + EMA if full)
    parts = {"parameters (M)": base / 1e6, "trainable (M)": trainable / 1e6,
             "weights": (weights + (trainable * 4 if lora_rank is not None else 0)) / GIB,
             "gradients": trainable * 4 / GIB, "AdamW moments": trainable * 8 / GIB,
             "activations": activations / GIB}
    parts["total"] = sum(v for k, v in parts.items() if k not in ("parameters (M)", "trainable (M)"))
    return parts


def unet_inputs(config: dict, text_length: int):
    """inputs(batch, dtype) for a UNet2DConditionModel of this config: latents at its sample size, a timestep
    per example and text_length prompt embeddings."""
    size, channels, width = config["sample_size"], config["in_channels"], config["cross_attention_dim"]

    def inputs(batch, dtype):
        out = {"sample": torch.empty(batch, channels, size, size, dtype=dtype), "timestep": torch.empty(batch),
               "return_dict": False, "encoder_hidden_states": torch.empty(batch, text_length, width, dtype=dtype)}
        if config.get("addition_embed_type") == "text_time":  # SDXL's pooled text_embeds and 6 time_ids
            pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
            out["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled, dtype=dtype),
                                        "time_ids": torch.empty(batch, 6, dtype=dtype)}
        return out
    return inputs


def sd3_inputs(config: dict, text_length: int):
    """inputs(batch, dtype) for an SD3Transformer2DModel: latents, joint text embeddings and pooled ones."""
    size, channels = config["sample_size"], config["in_channels"]
    return lambda batch, dtype: {
        "hidden_states": torch.empty(batch, channels, size, size, dtype=dtype), "timestep": torch.empty(batch),
        "encoder_hidden_states": torch.empty(batch, text_length, config["joint_attention_dim"], dtype=dtype),
        "pooled_projections": torch.empty(batch, config["pooled_projection_dim"], dtype=dtype), "return_dict": False}
