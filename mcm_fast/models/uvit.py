"""The UViT of simple diffusion (Hoogeboom et al. 2023): a U-Net with ResNet levels at high resolution and
transformer levels (self-attention + MLP blocks) at low resolution, as the MCM paper's ImageNet models.

net(z [B, C, H, W], logsnr [B], label [B] | None) -> out [B, C, H, W], the raw output a Denoiser turns into
x_hat (v-prediction in the paper). The choices the paper leaves open, made here:
- Conditioning: Fourier features of the logSNR -> MLP -> emb (+ a class embedding, index num_classes is the
  null class of classifier-free guidance), SiLU once. ResNet blocks scale/shift their second GroupNorm by a
  linear map of emb (FiLM); transformer blocks scale/shift both LayerNorms (adaLN, no gates).
- Widths change only between levels, by a 1x1 conv after each 2x2 average pooling (and before each
  nearest-neighbour upsampling): every block keeps its width, so no block needs a projected residual.
- The up path has as many blocks per level as the down path; each first concatenates the output of the
  matching down block and projects 2C -> C with a 1x1 conv (a linear map on the tokens of transformer levels).
- Transformer levels and the middle add a fixed 2-D sinusoidal position embedding to their tokens on entry,
  so any resolution divisible by 2**len(levels) works.
- emb_channels is 2048 in both ImageNet64 presets (not doubled in the large one): with the adaLN and FiLM
  maps above, the counts are 402.9M and 1.2605B, 1.02x the paper's 394M and 1.23B.
- The last conv is zero-initialized: the initial network outputs 0.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcm_fast._checks import can_read_values, check_float_tensor
from mcm_fast.models.dropout import Dropout
from mcm_fast.models.embeddings import FourierEmbedding, StudentInputs, check_student_steps
from mcm_fast.ops.attention import attention
from mcm_fast.ops.registry import BACKENDS

BLOCK_TYPES = ("resnet", "transformer")


@dataclass
class UViTConfig:
    """The UViT's sizes; each level is (kind, channels, blocks) or (kind, channels, blocks, dropout), kind
    "resnet" or "transformer", listed from the input resolution down. Checked on construction."""

    in_channels: int = 3
    num_classes: int = 0  # 0: unconditional; else labels 0..num_classes-1, and num_classes is the null class
    levels: tuple = (("resnet", 64, 2), ("resnet", 128, 2))
    middle_channels: int = 256  # the transformer blocks at the lowest resolution, H / 2**len(levels)
    middle_blocks: int = 4
    emb_channels: int = 256
    fourier_features: int = 64
    head_dim: int = 64  # heads = channels // head_dim in every transformer block
    mlp_ratio: int = 4
    dropout: float = 0.0  # every block's, unless its level or the middle says otherwise
    middle_dropout: float | None = None
    attention_backend: str | None = None  # passed to mcm_fast.ops.attention.attention
    student_steps: tuple = ()  # a student of several step counts: embeds each example's S (models.student_inputs)
    guidance_distilled: bool = False  # a student with guidance distilled into it: embeds each example's w

    def __post_init__(self):
        self.levels = tuple(tuple(level) for level in self.levels)  # JSON gives lists
        self.student_steps = check_student_steps(self.student_steps) if self.student_steps else ()
        if not isinstance(self.guidance_distilled, bool):
            raise ValueError(f"guidance_distilled: expected a bool, got {self.guidance_distilled!r}")
        for name in ("in_channels", "middle_channels", "emb_channels", "fourier_features", "head_dim", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("num_classes", "middle_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        if self.fourier_features % 2:
            raise ValueError(f"fourier_features: expected an even number (sin and cos), got {self.fourier_features}")
        if not self.levels:
            raise ValueError("levels: expected at least one (kind, channels, blocks) level, got none")
        for level in self.levels:
            if len(level) not in (3, 4) or level[0] not in BLOCK_TYPES:
                raise ValueError(f"levels: expected (kind, channels, blocks[, dropout]) with kind in {BLOCK_TYPES}, "
                                 f"got {level!r}")
            if isinstance(level[1], bool) or not isinstance(level[1], int) or level[1] < 1:
                raise ValueError(f"levels: expected channels an integer >= 1, got {level!r}")
            if isinstance(level[2], bool) or not isinstance(level[2], int) or level[2] < 1:
                raise ValueError(f"levels: expected blocks an integer >= 1, got {level!r}")
        drops = [("dropout", self.dropout), ("middle_dropout", self.middle_dropout)]
        drops += [("levels", level[3]) for level in self.levels if len(level) == 4]
        for name, p in drops:
            if p is not None and not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1):
                raise ValueError(f"{name}: expected a dropout probability in [0, 1), got {p!r}")
        widths = [("middle_channels", self.middle_channels)]
        widths += [("levels", c) for kind, c, *_ in self.levels if kind == "transformer"]
        for name, channels in widths:
            if channels % self.head_dim or channels % 4:
                raise ValueError(f"{name}: transformer channels must be divisible by head_dim={self.head_dim} and by 4 "
                                 f"(2-D sin/cos positions), got {channels}")
        if self.attention_backend is not None and self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend: expected one of {BACKENDS} or None, got {self.attention_backend!r}")


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with 32 groups, fewer for narrow layers: groups keep at least 4 channels (16 -> 4 groups)."""
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels, affine=affine)


def position_embedding(height: int, width: int, channels: int, device, dtype) -> torch.Tensor:
    """Fixed 2-D sin/cos positions [H * W, C]: the row in the first half of the channels, the column in the second.

    Computed from shapes alone, so it works at any resolution and on the meta device.
    """
    freqs = torch.exp(torch.arange(channels // 4, device=device) * (-math.log(10_000) / (channels // 4)))
    rows = torch.arange(height, device=device)[:, None] * freqs  # [H, C/4]
    cols = torch.arange(width, device=device)[:, None] * freqs  # [W, C/4]
    rows = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None].expand(height, width, channels // 2)
    cols = torch.cat([cols.sin(), cols.cos()], dim=1)[None].expand(height, width, channels // 2)
    return torch.cat([rows, cols], dim=2).reshape(height * width, channels).to(dtype)


def to_tokens(h: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H * W, C] plus the 2-D position embedding."""
    channels, height, width = h.shape[1:]
    return h.flatten(2).transpose(1, 2) + position_embedding(height, width, channels, h.device, h.dtype)


def to_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H * W, C] -> [B, C, H, W]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class ResBlock(nn.Module):
    """h + conv(dropout(SiLU(FiLM(norm(conv(SiLU(norm(h)))), emb)))): the ResNet block of the high levels.

    FiLM: the second norm is scaled by (1 + scale) and shifted by shift, both linear in emb.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(emb_channels, 2 * channels)
        self.norm2 = group_norm(channels, affine=False)  # the FiLM is its affine map
        self.dropout = Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # [B, C, 1, 1] each
        x = self.conv1(F.silu(self.norm1(h)))
        x = self.norm2(x) * (1 + scale) + shift
        return h + self.conv2(self.dropout(F.silu(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on tokens [B, N, C]: x + attn(adaLN(x)), then x + dropout(MLP(adaLN(x))).

    adaLN: each LayerNorm (no affine of its own) is scaled by (1 + scale) and shifted by shift, linear in emb.
    """

    def __init__(self, channels: int, emb_channels: int, head_dim: int, mlp_ratio: int, dropout: float,
                 attention_backend: str | None):
        super().__init__()
        self.heads = channels // head_dim
        self.attention_backend = attention_backend
        self.ada = nn.Linear(emb_channels, 4 * channels)
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels, elementwise_affine=False)
        self.fc1 = nn.Linear(channels, mlp_ratio * channels)
        self.fc2 = nn.Linear(mlp_ratio * channels, channels)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        scale1, shift1, scale2, shift2 = self.ada(emb)[:, None].chunk(4, dim=2)  # [B, 1, C] each
        h = self.norm1(x) * (1 + scale1) + shift1
        qkv = self.qkv(h).view(batch, tokens, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, d]
        h = attention(q, k, v, backend=self.attention_backend).transpose(1, 2).reshape(batch, tokens, channels)
        x = x + self.proj(h)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + self.dropout(self.fc2(F.gelu(self.fc1(h))))


def _resize(channels_in: int, channels_out: int) -> nn.Module:
    """The 1x1 conv that changes the width between levels (identity when it stays)."""
    return nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()


class UViT(nn.Module):
    """The UViT: net(z [B, C, H, W], logsnr [B], label=None) -> [B, C, H, W] (see the module docstring).

    label: [B] integers in [0, num_classes] (num_classes: the null class); None on a conditional model means
    the null class. Computes in z's dtype; H and W must be divisible by 2**len(levels). A student built with
    config.student_steps or config.guidance_distilled also takes student_steps= and guidance= ([B] each).
    """

    def __init__(self, config: UViTConfig):
        super().__init__()
        if not isinstance(config, UViTConfig):
            raise TypeError(f"config: expected a UViTConfig, got {type(config).__name__}")
        self.config = c = config
        emb = c.emb_channels
        self.fourier = FourierEmbedding(c.fourier_features)
        self.embed_logsnr = nn.Sequential(nn.Linear(c.fourier_features, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.embed_class = nn.Embedding(c.num_classes + 1, emb) if c.num_classes else None
        self.student_inputs = StudentInputs(emb, c.student_steps, c.guidance_distilled, c.fourier_features)
        self.student_steps = self.student_inputs.student_steps
        self.guidance_distilled = c.guidance_distilled

        widths = [level[1] for level in c.levels]
        below = widths[1:] + [c.middle_channels]  # the width of the next lower level

        def blocks(kind, channels, count, dropout):
            if kind == "resnet":
                return nn.ModuleList(ResBlock(channels, emb, dropout) for _ in range(count))
            return nn.ModuleList(TransformerBlock(channels, emb, c.head_dim, c.mlp_ratio, dropout, c.attention_backend)
                                 for _ in range(count))

        drops = [level[3] if len(level) == 4 else c.dropout for level in c.levels]
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(blocks(kind, ch, n, p) for (kind, ch, n, *_), p in zip(c.levels, drops))
        self.down_resize = nn.ModuleList(_resize(ch, lower) for ch, lower in zip(widths, below))
        middle_dropout = c.dropout if c.middle_dropout is None else c.middle_dropout
        self.middle = blocks("transformer", c.middle_channels, c.middle_blocks, middle_dropout)
        self.up_resize = nn.ModuleList(_resize(lower, ch) for ch, lower in zip(widths, below))
        self.up = nn.ModuleList(blocks(kind, ch, n, p) for (kind, ch, n, *_), p in zip(c.levels, drops))
        self.skip = nn.ModuleList(
            nn.ModuleList((nn.Conv2d(2 * ch, ch, 1) if kind == "resnet" else nn.Linear(2 * ch, ch)) for _ in range(n))
            for kind, ch, n, *_ in c.levels
        )
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], c.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def make_identity(self, middle: range) -> None:
        """Zeroes the residual outputs (attention projection, second MLP layer) of these middle blocks, which then
        pass their tokens through unchanged: a student deeper than its teacher starts as the teacher."""
        for block in (self.middle[i] for i in middle):
            for layer in (block.proj, block.fc2):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _check(self, z, logsnr, label) -> None:
        c = self.config
        check_float_tensor("z", z)
        factor = 2 ** len(c.levels)
        if z.dim() != 4 or z.shape[1] != c.in_channels or z.shape[2] % factor or z.shape[3] % factor:
            raise ValueError(f"z: expected [B, {c.in_channels}, H, W] with H and W divisible by {factor} "
                             f"(2**{len(c.levels)} levels), got shape {tuple(z.shape)}")
        check_float_tensor("logsnr", logsnr)
        if logsnr.shape != z.shape[:1]:
            raise ValueError(f"logsnr: expected shape [{z.shape[0]}] (one per sample of z), got {tuple(logsnr.shape)}")
        if label is None:
            return
        if not c.num_classes:
            raise ValueError(f"label: expected None for an unconditional UViT (num_classes=0), got "
                             f"{type(label).__name__}")
        if not isinstance(label, torch.Tensor) or label.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"label: expected an int64 or int32 tensor of shape [{z.shape[0]}], got {label!r}")
        if label.shape != z.shape[:1]:
            raise ValueError(f"label: expected shape [{z.shape[0]}] (one per sample of z), got {tuple(label.shape)}")
        if label.device != z.device:
            raise ValueError(f"label: expected device {z.device} like z, got {label.device}")
        readable = label.device.type != "meta" and can_read_values(label)
        if readable and bool(((label < 0) | (label > c.num_classes)).any()):
            raise ValueError(f"label: expected classes in [0, {c.num_classes}] ({c.num_classes}: the null class), "
                             f"got {label.min().item()}..{label.max().item()}")

    def embedding(self, logsnr: torch.Tensor, label: torch.Tensor | None, dtype: torch.dtype,
                  student_steps: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """SiLU(MLP(Fourier(logsnr)) + class embedding (+ S and w embeddings)) [B, emb_channels]: what every block
        is conditioned on."""
        emb = self.embed_logsnr(self.fourier(logsnr).to(dtype))
        if self.embed_class is not None:
            if label is None:
                label = torch.full(logsnr.shape, self.config.num_classes, dtype=torch.long, device=logsnr.device)
            emb = emb + self.embed_class(label).to(emb.dtype)
        return F.silu(self.student_inputs(emb, student_steps, guidance))

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, label: torch.Tensor | None = None,
                student_steps: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        self._check(z, logsnr, label)
        emb = self.embedding(logsnr, label, z.dtype, student_steps, guidance)
        kinds = [level[0] for level in self.config.levels]
        # channels-last: faster convs (oneDNN, cuDNN), and the token views of transformer levels copy nothing
        h = self.conv_in(z.contiguous(memory_format=torch.channels_last))  # [B, C0, H, W]
        skips = []
        for kind, blocks, resize in zip(kinds, self.down, self.down_resize):
            height, width = h.shape[2:]
            h = to_tokens(h) if kind == "transformer" else h
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = to_image(h, height, width) if kind == "transformer" else h
            h = resize(F.avg_pool2d(h, 2))  # [B, C_next, H/2, W/2]
        height, width = h.shape[2:]
        h = to_tokens(h)  # [B, H * W, C_mid] at the lowest resolution
        for block in self.middle:
            h = block(h, emb)
        h = to_image(h, height, width)
        for kind, blocks, skip, resize in reversed(list(zip(kinds, self.up, self.skip, self.up_resize))):
            h = F.interpolate(resize(h), scale_factor=2, mode="nearest")  # [B, C, 2H, 2W]
            height, width = h.shape[2:]
            h = to_tokens(h) if kind == "transformer" else h
            for block, project in zip(blocks, skip):
                h = block(project(torch.cat([h, skips.pop()], dim=2 if kind == "transformer" else 1)), emb)
            h = to_image(h, height, width) if kind == "transformer" else h
        return self.conv_out(F.silu(self.norm_out(h)))


UVIT_PRESETS: dict[str, UViTConfig] = {
    # the CPU demo: MNIST at 16x16, middle at 4x4; narrow, to train at > 500 images/s (batch 128) on 2 CPU cores
    "tiny": UViTConfig(in_channels=1, num_classes=10, levels=(("resnet", 16, 1), ("resnet", 32, 1)),
                       middle_channels=128,
                       middle_blocks=2, emb_channels=128, head_dim=32),
    # MNIST at 16x16 with the parameters at high resolution: two ResNet blocks of 32 and 64 channels per level, a
    # narrow middle (0.59M parameters, 41.9M multiply-adds per image); a 6.5x better teacher than "tiny" at the
    # same budget, and better than a UNet2DModel of 0.69M (docs/results.md, "Which backbone?")
    "tiny-res": UViTConfig(in_channels=1, num_classes=10, levels=(("resnet", 32, 2), ("resnet", 64, 2)),
                           middle_channels=64, middle_blocks=2, emb_channels=64, head_dim=32),
    # the MNIST reproduction at 32x32, middle at 8x8
    "mnist": UViTConfig(in_channels=1, num_classes=10, levels=(("resnet", 64, 2), ("resnet", 128, 2)),
                        middle_channels=256,
                        middle_blocks=4, emb_channels=256, dropout=0.1),
    # the paper's ImageNet64 small model (394M): middle at 16x16
    "in64-small": UViTConfig(in_channels=3, num_classes=1000, levels=(("resnet", 256, 3), ("transformer", 512, 3)),
                             middle_channels=1024, middle_blocks=16, emb_channels=2048, middle_dropout=0.2),
    # the large one (1.23B): channels x2, dropout 0.1 on the transformer blocks only
    "in64-large": UViTConfig(in_channels=3, num_classes=1000,
                             levels=(("resnet", 512, 3), ("transformer", 1024, 3, 0.1)),
                             middle_channels=2048, middle_blocks=16, emb_channels=2048, dropout=0.0,
                             middle_dropout=0.1),
}


def uvit(name_or_config: str | UViTConfig, **overrides) -> UViT:
    """A UViT from a preset name of UVIT_PRESETS (or a config), with fields replaced by overrides.

    As the trainer builds one: uvit("mnist", in_channels=1, num_classes=10).
    """
    if isinstance(name_or_config, str):
        if name_or_config not in UVIT_PRESETS:
            raise ValueError(f"name_or_config: expected one of {sorted(UVIT_PRESETS)} or a UViTConfig, got "
                             f"{name_or_config!r}")
        config = UVIT_PRESETS[name_or_config]
    elif isinstance(name_or_config, UViTConfig):
        config = name_or_config
    else:
        raise TypeError(f"name_or_config: expected a preset name or a UViTConfig, got {type(name_or_config).__name__}")
    known = {f.name for f in dataclasses.fields(UViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"overrides: unknown UViTConfig field(s) {', '.join(unknown)} (known: "
                        f"{', '.join(sorted(known))})")
    return UViT(dataclasses.replace(config, **overrides))


def count_parameters(module: nn.Module) -> int:
    """The number of parameter elements of module (shared ones once): the paper's model size."""
    return sum(p.numel() for p in module.parameters())
