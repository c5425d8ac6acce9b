"""A text-to-image diffusers pipeline folder small enough to train on a CPU (issue 34's proof at a size that trains
here): the real component classes of Stable Diffusion 1.x (AutoencoderKL, CLIPTextModel with its CLIPTokenizer,
UNet2DConditionModel, DDPMScheduler), built from explicit configs, randomly initialized from a seed and saved in
save_pretrained's layout (safetensors only), so that `StableDiffusionPipeline.from_pretrained(folder)` loads it.

The tokenizer's vocabulary is the words of DIGIT_PROMPTS ("a handwritten digit seven"), one BPE token each;
nothing is downloaded. Needs the optional extras diffusers and transformers.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mcm_fast.data.captions import DIGIT_PROMPTS
from mcm_fast.models.diffusers_nets import import_diffusers

SPECIAL = ("<|startoftext|>", "<|endoftext|>")  # CLIP's begin and end (and padding) tokens
PROMPT_LENGTH = 8  # tokens per prompt: begin, four words, end, padding

VAE = {"in_channels": 1, "out_channels": 1, "latent_channels": 4, "block_out_channels": [16, 32],
       "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
       "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 16, "scaling_factor": 1.0}
TEXT_ENCODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "max_position_embeddings": PROMPT_LENGTH, "projection_dim": 32}
UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32, "attention_head_dim": 8,
        "norm_num_groups": 8}
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "prediction_type": "epsilon", "clip_sample": False, "steps_offset": 1}


def bpe_vocabulary(words) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of a CLIP BPE tokenizer that reads each word as one token: every character alone and
    word-final (c</w>), and the merges that join a word's characters left to right."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL, *sorted({c for w in words for c in w} | {c + "</w>" for w in words for c in w})):
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        joined = pieces[0]
        for piece in pieces[1:]:
            if f"{joined} {piece}" not in merges:
                merges.append(f"{joined} {piece}")
            joined += piece
            vocab.setdefault(joined, len(vocab))
    return vocab, merges


def tiny_text_pipeline(out: str | Path, prompts=DIGIT_PROMPTS, seed: int = 0, prediction_type: str = "epsilon",
                       vae: dict | None = None, unet: dict | None = None) -> Path:
    """Writes a Stable-Diffusion-1.x-style pipeline folder (vae/, text_encoder/, tokenizer/, unet/, scheduler/,
    model_index.json) with randomly initialized tiny components; vae and unet override VAE's and UNET's keys."""
    diffusers = import_diffusers()
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out)
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    words = sorted({word for prompt in prompts for word in prompt.split()})
    vocab, merges = bpe_vocabulary(words)
    (out / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (out / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(out / "tokenizer" / "vocab.json"), str(out / "tokenizer" / "merges.txt"),
                              model_max_length=PROMPT_LENGTH, pad_token=SPECIAL[1])
    tokenizer.save_pretrained(out / "tokenizer")
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                 **TEXT_ENCODER)
    CLIPTextModel(text_config).save_pretrained(out / "text_encoder", safe_serialization=True)
    diffusers.AutoencoderKL(**{**VAE, **(vae or {})}).save_pretrained(out / "vae", safe_serialization=True)
    diffusers.UNet2DConditionModel(**{**UNET, **(unet or {})}).save_pretrained(out / "unet", safe_serialization=True)
    diffusers.DDPMScheduler(**{**SCHEDULER, "prediction_type": prediction_type}).save_pretrained(out / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
