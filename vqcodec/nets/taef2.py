"""TAEF2, a tiny pretrained image autoencoder (MIT, github.com/madebyollin/taesd), and the f=16
VQ coder we train in its latent space.

TAEF2 maps an RGB image in [0, 1] to a 32-channel latent at 1/8 resolution and back; its decoder
is distilled to *generate* plausible detail from that latent, which is what an extreme-rate codec
needs and what CPU training from scratch never reached (docs/history.md). vqcodec codes in that
latent space (route (a) of docs/training.md): a small convolutional coder turns the 32 x H/8 x W/8
latent into one 16-d vector per 16x16 pixels for the VQ, and its mirror image turns code vectors
back into a TAEF2 latent for the (fine-tuned) TAEF2 decoder.

The modules below are written here to match the published state_dict key names (plain
``nn.Sequential`` indices), so ``taef2_encoder.pth``/``taef2_decoder.pth`` load with
``load_state_dict``; the weights' MIT notice travels with every bundle derived from them
(``models/<bundle>/LICENSE-TAEF2``).

Data flow (with the coder of ``autoencoder.py``)::

    x [-1,1] -> [0,1] -> TAEF2 encoder -> (B,32,H/8,W/8) -> coder: conv, res, stride-2 conv, res
      -> (B,z,H/16,W/16) -> quant_conv -> VQ -> post_quant_conv -> res, nearest 2x up, conv, res
      -> (B,32,H/8,W/8) -> TAEF2 decoder -> [0,1] -> [-1,1]
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LATENT_CHANNELS = 32
LATENT_STRIDE = 8
LATENT_CLAMP = 3.0
"""The TAEF2 decoder's first op squashes latents with ``3 tanh(z / 3)``: latent losses compare there."""


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose output does not depend on the number of CPU threads.

    torch splits the reduction of a few large groups across threads, so the statistics, and
    through them every pixel after them, changed with ``OMP_NUM_THREADS`` (TAEF2's decoder in bf16:
    15 % of the samples of kodim23 differed, by up to 8 levels, between 1 and 2 threads; every
    other layer was identical). Summed in float64, the order no longer reaches the float32
    statistics, so a decode is the same for any thread count (docs/architecture.md). Same
    parameters and state_dict keys as ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = x.float().reshape(b, self.num_groups, -1)
        g64 = g.double()
        mean = g64.mean(-1, keepdim=True)
        var = (g64 - mean).square().mean(-1, keepdim=True)
        y = ((g - mean.float()) * torch.rsqrt(var.float() + self.eps)).reshape(x.shape)
        if self.affine:
            per_channel = (1, c) + (1,) * (x.dim() - 2)
            y = y * self.weight.float().view(per_channel) + self.bias.float().view(per_channel)
        return y.to(x.dtype) if not torch.is_autocast_enabled("cpu") else y


def _conv(cin: int, cout: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, **kw)


def squash(z: torch.Tensor) -> torch.Tensor:
    """Soft clamp to (-3, 3): the latent as TAEF2's decoder sees it (latent losses compare here)."""
    return torch.tanh(z / LATENT_CLAMP) * LATENT_CLAMP


class Clamp(nn.Module):
    """``squash`` as a module: the decoder's input stage."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash(x)


class Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv plus identity skip, then ReLU.

    ``pool`` (TAEF2's lowest-resolution blocks) adds a GroupNorm branch to the input first; its
    GroupNorm statistics span the whole image, so the branch carries image-global context.
    """

    def __init__(self, ch: int, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(ch, ch), nn.ReLU(), _conv(ch, ch), nn.ReLU(), _conv(ch, ch))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = (
            nn.Sequential(
                nn.Conv2d(ch, 4 * ch, 1, bias=False), GroupNorm(4, 4 * ch), nn.ReLU(), nn.Conv2d(4 * ch, ch, 1, bias=False)
            )
            if pool
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def taef2_encoder() -> nn.Sequential:
    """RGB [0,1] (B,3,H,W) -> latent (B,32,H/8,W/8); H, W multiples of 8."""
    c = 64
    return nn.Sequential(
        _conv(3, c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c, True), Block(c, True), Block(c, True),
        _conv(c, LATENT_CHANNELS),
    )  # fmt: skip


def taef2_decoder() -> nn.Sequential:
    """Latent (B,32,h,w) -> RGB (B,3,8h,8w), about [0,1] (clamp outside)."""
    c = 64
    return nn.Sequential(
        Clamp(), _conv(LATENT_CHANNELS, c), nn.ReLU(),
        Block(c, True), Block(c, True), Block(c, True), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), _conv(c, 3),
    )  # fmt: skip


def default_weights_dir() -> Path:
    """``$VQC_TAEF2`` or ``../shared/weights/taef2`` beside the checkout."""
    import os

    env = os.environ.get("VQC_TAEF2")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared/weights/taef2"


def load_pretrained(encoder: nn.Module | None, decoder: nn.Module | None, folder: Path | None = None) -> Path:
    """Load the published TAEF2 weights (fp16 files, cast to the modules' dtype); returns the folder."""
    folder = folder or default_weights_dir()
    for net, name in ((encoder, "taef2_encoder.pth"), (decoder, "taef2_decoder.pth")):
        if net is None:
            continue
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"TAEF2 weights not found: {path} (set VQC_TAEF2 to their folder)")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in sd.items()})
    return folder


__all__ = ["LATENT_CHANNELS", "LATENT_CLAMP", "LATENT_STRIDE", "Block", "GroupNorm", "load_pretrained", "squash",
           "taef2_decoder", "taef2_encoder"]  # fmt: skip
