"""Text-to-image diffusers pipeline folders small enough to train on a CPU (issue 34's proof at a size that trains
here): the real component classes of Stable Diffusion 1.x (AutoencoderKL, CLIPTextModel with its CLIPTokenizer,
UNet2DConditionModel, DDPMScheduler), of SDXL (a CLIPTextModel and a CLIPTextModelWithProjection, a UNet with added
text_embeds and time_ids, EulerDiscreteScheduler) and of SD3 (two CLIPTextModelWithProjection, optionally a
T5EncoderModel with its T5TokenizerFast, SD3Transformer2DModel, FlowMatchEulerDiscreteScheduler), built from
explicit configs, randomly initialized from a seed and saved in save_pretrained's layout (safetensors only), so that
`StableDiffusionPipeline.from_pretrained(folder)` (or the XL or 3 pipeline's) loads it.

The tokenizer's vocabulary is the words of DIGIT_PROMPTS ("a handwritten digit seven"), one BPE token each; nothing
is downloaded. Needs the optional extras diffusers and transformers.
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
SDXL_UNET = {**UNET, "cross_attention_dim": 64, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": 6 * 8 + TEXT_ENCODER["projection_dim"]}  # time_ids, pooled
SD3_TRANSFORMER = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 2,
                   "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 64,
                   "caption_projection_dim": 16, "pooled_projection_dim": 64, "pos_embed_max_size": 8}
SD3_VAE = {**VAE, "scaling_factor": 1.5, "shift_factor": 0.1}  # SD3's VAE shifts its latents too
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


def write_tokenizer(out: Path, prompts) -> dict[str, int]:
    """A CLIPTokenizer that reads each word of prompts as one token, saved to out; returns its vocabulary."""
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe_vocabulary(sorted({word for prompt in prompts for word in prompt.split()}))
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=PROMPT_LENGTH,
                  pad_token=SPECIAL[1]).save_pretrained(out)
    return vocab


def write_text_encoder(out: Path, vocab: dict, projection: bool = False) -> None:
    """A randomly initialized TEXT_ENCODER-sized CLIP text encoder (with its projection: SD3's), saved to out."""
    import transformers

    config = transformers.CLIPTextConfig(vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                         **TEXT_ENCODER)
    model = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    model(config).save_pretrained(out, safe_serialization=True)


def tiny_text_pipeline(out: str | Path, prompts=DIGIT_PROMPTS, seed: int = 0, prediction_type: str = "epsilon",
                       vae: dict | None = None, unet: dict | None = None) -> Path:
    """Writes a Stable-Diffusion-1.x-style pipeline folder (vae/, text_encoder/, tokenizer/, unet/, scheduler/,
    model_index.json) with randomly initialized tiny components; vae and unet override VAE's and UNET's keys."""
    diffusers = import_diffusers()
    out = Path(out)
    vocab = write_tokenizer(out / "tokenizer", prompts)
    torch.manual_seed(seed)
    write_text_encoder(out / "text_encoder", vocab)
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


def tiny_sdxl_pipeline(out: str | Path, prompts=DIGIT_PROMPTS, seed: int = 0) -> Path:
    """Writes an SDXL-style pipeline folder (vae/, text_encoder/ a CLIPTextModel and text_encoder_2/ a
    CLIPTextModelWithProjection with their tokenizers, unet/ with SDXL's added conditions, scheduler/ an
    EulerDiscreteScheduler, model_index.json with force_zeros_for_empty_prompt) with randomly initialized tiny
    components."""
    diffusers = import_diffusers()
    out = Path(out)
    torch.manual_seed(seed)
    for suffix, projection in (("", False), ("_2", True)):
        vocab = write_tokenizer(out / f"tokenizer{suffix}", prompts)
        write_text_encoder(out / f"text_encoder{suffix}", vocab, projection=projection)
    diffusers.AutoencoderKL(**VAE).save_pretrained(out / "vae", safe_serialization=True)
    diffusers.UNet2DConditionModel(**SDXL_UNET).save_pretrained(out / "unet", safe_serialization=True)
    scheduler = {k: v for k, v in SCHEDULER.items() if k != "clip_sample"}
    diffusers.EulerDiscreteScheduler(**scheduler).save_pretrained(out / "scheduler")
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__,
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "image_encoder": [None, None], "feature_extractor": [None, None], "force_zeros_for_empty_prompt": True}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def tiny_sd3_pipeline(out: str | Path, prompts=DIGIT_PROMPTS, seed: int = 0, shift: float = 3.0,
                      t5: bool = False, transformer: dict | None = None) -> Path:
    """Writes an SD3-style pipeline folder (vae/, text_encoder/ and text_encoder_2/ with their tokenizers,
    transformer/, scheduler/ a FlowMatchEulerDiscreteScheduler with this shift, model_index.json; with t5 also
    text_encoder_3/ and tokenizer_3/, else SD3 without T5) with randomly initialized tiny components; transformer
    overrides SD3_TRANSFORMER's keys."""
    import transformers

    diffusers = import_diffusers()
    out = Path(out)
    torch.manual_seed(seed)
    for suffix in ("", "_2"):
        vocab = write_tokenizer(out / f"tokenizer{suffix}", prompts)
        write_text_encoder(out / f"text_encoder{suffix}", vocab, projection=True)
    if t5:  # a Unigram vocabulary of the prompts' words; T5's width is the transformer's joint_attention_dim
        words = sorted({word for prompt in prompts for word in prompt.split()})
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *[("\u2581" + w, -1.0) for w in words]]
        transformers.T5TokenizerFast(vocab=pieces, extra_ids=0).save_pretrained(out / "tokenizer_3")
        config = transformers.T5Config(vocab_size=len(pieces), d_model=SD3_TRANSFORMER["joint_attention_dim"],
                                       d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        transformers.T5EncoderModel(config).save_pretrained(out / "text_encoder_3", safe_serialization=True)
    diffusers.AutoencoderKL(**SD3_VAE).save_pretrained(out / "vae", safe_serialization=True)
    diffusers.SD3Transformer2DModel(**{**SD3_TRANSFORMER, **(transformer or {})}).save_pretrained(
        out / "transformer", safe_serialization=True)
    diffusers.FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(out / "scheduler")
    clip = ["transformers", "CLIPTextModelWithProjection"]
    index = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__,
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": clip, "text_encoder_2": clip,
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "text_encoder_3": ["transformers", "T5EncoderModel"] if t5 else [None, None],
             "tokenizer_3": ["transformers", "T5TokenizerFast"] if t5 else [None, None],
             "transformer": ["diffusers", "SD3Transformer2DModel"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "image_encoder": [None, None],
             "feature_extractor": [None, None]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
