"""PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator``) with feature outputs.

Returns per-patch logits plus the intermediate activations, so the generator can be trained with
a hinge loss and discriminator feature matching (which steadies GAN training on small batches).
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """``n_layers`` stride-2 conv blocks then a 1-channel conv: one logit per ~70x70 patch."""

    def __init__(self, ch: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2))]
        c = ch
        for i in range(1, n_layers + 1):
            nc = ch * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c, nc, 4, stride, 1, bias=False),
                    nn.GroupNorm(32, nc),
                    nn.LeakyReLU(0.2),
                )
            )
            c = nc
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c, 1, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return self.head(x), feats
