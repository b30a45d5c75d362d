"""f=16 VQGAN autoencoders: the taming-transformers layout and a small CPU-friendly default.

Both configs are built by the same classes, whose module names follow taming-transformers'
``VQModel`` (``encoder.down[i].block[j]``, ``encoder.mid.attn_1``, ``quant_conv``,
``post_quant_conv``, ``quantize.embedding``...). With ``ARCHS["taming-f16"]`` every tensor name
and shape equals the public f=16 checkpoints, so one can be imported later; ``ARCHS["vq-f16-small"]``
is the model we train on CPU: a space-to-depth stem (PixelUnshuffle 4) and a pixel-shuffle output
keep the work at full resolution small, widths 64-128-192 (7.4M parameters), a 16-d cosine
codebook of 1024 codes.

Data flow::

    x (B,3,H,W) in [-1,1] -> Encoder -> (B,z,H/16,W/16) -> quant_conv -> (B,d,h,w)
      -> quantizer -> indices (B,m,h,w) -> code vectors (B,d,h,w) -> post_quant_conv -> Decoder -> x_hat
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.nets.dual import DualCodebookVQ
from vqcodec.nets.looc import LoocVQ
from vqcodec.nets.quantizers import CosineVQ
from vqcodec.nets.taef2 import LATENT_CHANNELS, LATENT_STRIDE, GroupNorm, taef2_decoder, taef2_encoder

QUANTIZERS = ("vq", "looc", "dual")
BACKBONES = ("vqgan", "taef2")
MAX_PLANES = 16
"""Index planes per position a .vqc header can declare (docs/bitstream.md)."""


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture hyper-parameters (stored verbatim in a bundle's manifest)."""

    channels: tuple[int, ...]  # width of each resolution level, first at H/stem
    enc_res_blocks: tuple[int, ...]  # residual blocks per encoder level
    dec_res_blocks: tuple[int, ...]  # residual blocks per decoder level
    attn_levels: tuple[int, ...] = ()  # levels (0 = finest) with self-attention after each block
    stem: int = 1  # space-to-depth factor of the input stem (1: plain conv_in)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    cosine: bool = True
    mid_attn: bool = True
    quantizer: str = "vq"  # vq | looc | dual (QUANTIZERS)
    m: int = 1  # vq: 1; looc: sub-vectors per latent; dual: 2
    extrapolate: bool = False  # looc: extrapolation-by-interpolation (4x the index planes)
    backbone: str = "vqgan"  # vqgan: pixels in and out; taef2: the coder works in TAEF2's latent (stem = 8)

    @property
    def stride(self) -> int:
        """Pixels per latent position along each axis (16 for f=16)."""
        return self.stem * 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown autoencoder config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


ARCHS: dict[str, AutoencoderConfig] = {}


def register_arch(name: str, config: AutoencoderConfig) -> None:
    """Add an architecture to the registry; names are unique."""
    if name in ARCHS:
        raise ValueError(f"architecture {name!r} is already registered")
    ARCHS[name] = config


register_arch(
    "taming-f16",
    AutoencoderConfig(
        channels=(128, 128, 256, 256, 512),
        enc_res_blocks=(2, 2, 2, 2, 2),
        dec_res_blocks=(3, 3, 3, 3, 3),
        attn_levels=(4,),
        stem=1,
        z_channels=256,
        embed_dim=256,
        n_embed=1024,
        cosine=False,
    ),
)
register_arch(
    "taef2-vq-f16",
    AutoencoderConfig(
        channels=(128, 192),
        enc_res_blocks=(1, 2),
        dec_res_blocks=(1, 2),
        attn_levels=(),
        stem=8,
        z_channels=192,
        embed_dim=16,
        n_embed=1024,
        cosine=True,
        mid_attn=False,
        backbone="taef2",
    ),
)
register_arch(
    "vq-f16-small",
    AutoencoderConfig(
        channels=(64, 128, 192),
        enc_res_blocks=(1, 1, 1),
        dec_res_blocks=(1, 2, 2),
        attn_levels=(),
        stem=4,
        z_channels=192,
        embed_dim=16,
        n_embed=1024,
        cosine=True,
    ),
)


def build_quantizer(cfg: AutoencoderConfig) -> nn.Module:
    """The quantizer a config names; ``n_embed`` is the base K (of each book), ``embed_dim`` d.

    ``cosine`` means a cosine lookup for plain VQ, and l2-normalised latents (Euclidean lookup of
    the parts) for LooC and dual.
    """
    if cfg.quantizer == "vq":
        if cfg.m != 1 or cfg.extrapolate:
            raise ValueError("plain VQ has m = 1 and no extrapolation")
        return CosineVQ(cfg.n_embed, cfg.embed_dim, cosine=cfg.cosine)
    if cfg.quantizer == "looc":
        if cfg.m * (4 if cfg.extrapolate else 1) > MAX_PLANES:
            raise ValueError(f"LooC with m = {cfg.m}{' and extrapolation' if cfg.extrapolate else ''} needs more "
                             f"than the {MAX_PLANES} index planes per position a .vqc file can carry")  # fmt: skip
        return LoocVQ(cfg.n_embed, cfg.embed_dim, groups=cfg.m, extrapolate=cfg.extrapolate, normalize=cfg.cosine)
    if cfg.quantizer == "dual":
        if cfg.m != 2 or cfg.extrapolate:
            raise ValueError("the dual codebook quantizer has m = 2 and no extrapolation")
        return DualCodebookVQ(cfg.n_embed, cfg.embed_dim, normalize=cfg.cosine)
    raise ValueError(f"unknown quantizer {cfg.quantizer!r}; known: {', '.join(QUANTIZERS)}")


def quantizer_record(q: nn.Module) -> dict:
    """What a bundle's manifest says about its quantizer (the decoder needs no flag)."""
    if isinstance(q, LoocVQ):
        return {"type": "looc", "m": q.m, "groups": q.groups, "code_dim": q.sub, "extrapolate": q.extrapolate}
    if isinstance(q, DualCodebookVQ):
        return {"type": "dual", "m": 2, "code_dim": q.half, "global_transformer_cached": True}
    return {"type": "vq", "m": 1, "cosine": q.cosine}


def _norm(ch: int) -> nn.GroupNorm:
    """taming's GroupNorm(32), with thread-count-independent statistics (``taef2.GroupNorm``)."""
    return GroupNorm(32, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """taming's ResnetBlock without time embedding: two GroupNorm-SiLU-conv3x3 and a skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (taming's AttnBlock), via scaled_dot_product_attention."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(o.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Asymmetric pad then stride-2 conv3x3, as in taming."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then conv3x3, as in taming."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int, attn: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        if attn:
            self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_1(x)
        if hasattr(self, "attn_1"):
            x = self.attn_1(x)
        return self.block_2(x)


class Encoder(nn.Module):
    """Image (B,3,H,W) -> latent (B,z_channels,H/stride,W/stride)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.stem = nn.PixelUnshuffle(cfg.stem) if cfg.stem > 1 else nn.Identity()
        self.conv_in = nn.Conv2d(3 * cfg.stem**2, cfg.channels[0], 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = cfg.channels[0]
        for level, (ch, nblocks) in enumerate(zip(cfg.channels, cfg.enc_res_blocks, strict=True)):
            down = nn.Module()
            down.block = nn.ModuleList()
            down.attn = nn.ModuleList()
            for _ in range(nblocks):
                down.block.append(ResnetBlock(block_in, ch))
                block_in = ch
                if level in cfg.attn_levels:
                    down.attn.append(AttnBlock(ch))
            if level != len(cfg.channels) - 1:
                down.downsample = Downsample(ch)
            self.down.append(down)
        self.mid = _Mid(block_in, cfg.mid_attn)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.stem(x))
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B,z_channels,h,w) -> image (B,3,h*stride,w*stride), unbounded (clamp outside)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        block_in = cfg.channels[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, cfg.mid_attn)
        ups: list[nn.Module] = []
        for level in reversed(range(len(cfg.channels))):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            ch = cfg.channels[level]
            for _ in range(cfg.dec_res_blocks[level]):
                up.block.append(ResnetBlock(block_in, ch))
                block_in = ch
                if level in cfg.attn_levels:
                    up.attn.append(AttnBlock(ch))
            if level != 0:
                up.upsample = Upsample(ch)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3 * cfg.stem**2, 3, 1, 1)
        self.unstem = nn.PixelShuffle(cfg.stem) if cfg.stem > 1 else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.unstem(self.conv_out(F.silu(self.norm_out(h))))


class LatentEncoder(nn.Module):
    """``backbone="taef2"``: image -> TAEF2 latent (B,32,H/8,W/8) -> coder -> (B,z,H/16,W/16).

    The coder is a conv_in, ``enc_res_blocks[0]`` residual blocks at ``channels[0]``, a 4x4 stride-2
    conv and ``enc_res_blocks[1]`` blocks at ``channels[1]``. When the TAEF2 part is frozen (the
    trainer's default) it runs without autograd: no activations kept at full resolution.
    """

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        if len(cfg.channels) != 2 or cfg.stem != LATENT_STRIDE:
            raise ValueError(f"the taef2 backbone needs two coder levels and stem = {LATENT_STRIDE}")
        self.taef2 = taef2_encoder()
        c0, c1 = cfg.channels
        self.conv_in = nn.Conv2d(LATENT_CHANNELS, c0, 3, 1, 1)
        self.block0 = nn.Sequential(*[ResnetBlock(c0, c0) for _ in range(cfg.enc_res_blocks[0])])
        self.downsample = nn.Conv2d(c0, c1, 4, 2, 1)
        self.block1 = nn.Sequential(*[ResnetBlock(c1, c1) for _ in range(cfg.enc_res_blocks[1])])
        self.norm_out = _norm(c1)
        self.conv_out = nn.Conv2d(c1, cfg.z_channels, 3, 1, 1)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> TAEF2 latent (B,32,H/8,W/8)."""
        trainable = any(p.requires_grad for p in self.taef2.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self.taef2(x * 0.5 + 0.5)

    def code(self, lat: torch.Tensor) -> torch.Tensor:
        h = self.block0(self.conv_in(lat))
        h = self.block1(self.downsample(h))
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.latent(x))


class LatentDecoder(nn.Module):
    """``backbone="taef2"``: (B,z,h,w) -> coder mirror -> TAEF2 latent (B,32,2h,2w) -> TAEF2 decoder.

    Upsampling is nearest 2x + conv in latent space; the image comes from TAEF2's decoder (nearest
    2x + conv three times at 64 channels), so there is no pixel-shuffle output stage and no grid.
    """

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c0, c1 = cfg.channels
        self.conv_in = nn.Conv2d(cfg.z_channels, c1, 3, 1, 1)
        self.block1 = nn.Sequential(*[ResnetBlock(c1, c1) for _ in range(cfg.dec_res_blocks[1])])
        self.upsample = nn.Conv2d(c1, c0, 3, 1, 1)
        self.block0 = nn.Sequential(*[ResnetBlock(c0, c0) for _ in range(cfg.dec_res_blocks[0])])
        self.norm_out = _norm(c0)
        self.conv_out = nn.Conv2d(c0, LATENT_CHANNELS, 3, 1, 1)
        self.taef2 = taef2_decoder()

    def latent(self, z: torch.Tensor) -> torch.Tensor:
        """(B,z,h,w) -> TAEF2 latent (B,32,2h,2w)."""
        h = self.block1(self.conv_in(z))
        h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.block0(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def render(self, lat: torch.Tensor) -> torch.Tensor:
        """TAEF2 latent -> image in about [-1,1]."""
        return self.taef2(lat) * 2.0 - 1.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.render(self.latent(z))


class VQAutoencoder(nn.Module):
    """Encoder + quant_conv + quantizer + post_quant_conv + decoder (taming's VQModel layout)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.config = cfg
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {cfg.backbone!r}; known: {', '.join(BACKBONES)}")
        taef2 = cfg.backbone == "taef2"
        self.encoder = LatentEncoder(cfg) if taef2 else Encoder(cfg)
        self.decoder = LatentDecoder(cfg) if taef2 else Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.quantize = build_quantizer(cfg)

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def memory_format(self) -> torch.memory_format:
        """Inputs' layout for inference: channels_last for the taef2 backbone (its full-resolution
        convolutions run fastest so in oneDNN); the vqgan backbone keeps the layout its shipped
        outputs were measured with."""
        return torch.channels_last if self.config.backbone == "taef2" else torch.contiguous_format

    def autocast(self):
        """The precision inference runs at: bf16 autocast for the taef2 backbone on CPUs with native
        bf16 (AMX / AVX-512 BF16: 3-5x faster than fp32), fp32 otherwise and for the vqgan backbone,
        whose shipped outputs stay bit-for-bit what they were. ``VQC_FP32=1`` forces fp32."""
        if self.config.backbone == "taef2" and native_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1], H and W multiples of ``stride`` -> pre-quantization latent."""
        return self.quant_conv(self.encoder(x))

    def decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantized latent -> image in about [-1,1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> indices (B,m,H/16,W/16) with the current codebook."""
        return self.quantize.quantize(self.encode_latent(x))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.quantize.dequantize(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: returns ``(x_hat, codebook_loss, indices)``."""
        z_q, qloss, idx = self.quantize_fp32(self.encode_latent(x))
        return self.decode_latent(z_q), qloss, idx

    def quantize_fp32(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The quantizer's training pass in fp32 even under bf16 autocast: nearest-code search,
        codebook loss and usage statistics need the precision (and restarts copy these latents)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.quantize(z.float())


def native_bf16() -> bool:
    """True on CPUs that run bf16 matrix work natively (and unless ``VQC_FP32=1``)."""
    if os.environ.get("VQC_FP32") == "1":
        return False
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, p, lambda: False)()) for p in probes)


def build_autoencoder(arch: str | AutoencoderConfig) -> VQAutoencoder:
    """Build by registry name or from an explicit config."""
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
        arch = ARCHS[arch]
    return VQAutoencoder(arch)


__all__ = [
    "ARCHS",
    "QUANTIZERS",
    "AutoencoderConfig",
    "VQAutoencoder",
    "build_autoencoder",
    "build_quantizer",
    "quantizer_record",
    "register_arch",
]
