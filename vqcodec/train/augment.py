"""Differentiable augmentation for the discriminator (DiffAugment, Zhao et al. 2020).

With 704 training photos a PatchGAN discriminator memorises the real set within a few thousand
steps and its gradient stops meaning "looks like a photo". Applying the same random colour,
translation and cutout policy to real and fake inputs (differentiably, so the generator's gradient
flows through it) keeps it from memorising, at no cost in generator quality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diff_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Colour (brightness, saturation, contrast), translation by up to 1/8 and one 1/4 cutout.

    Args:
        x: (B,3,H,W) images in [-1,1]; the same call must see real and fake halves of one batch
            when they should get independent draws (each sample gets its own).
    """
    b, _, h, w = x.shape
    dev = x.device

    def r(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(dev, x.dtype)

    x = x + (r(b, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (r(b, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (r(b, 1, 1, 1) + 0.5) + mean  # contrast
    # translation: shift by up to 1/8 of the side, zero fill (pad then crop per sample)
    sy, sx = h // 8, w // 8
    ty = (r(b) * (2 * sy + 1)).long().clamp(max=2 * sy)
    tx = (r(b) * (2 * sx + 1)).long().clamp(max=2 * sx)
    pad = F.pad(x, (sx, sx, sy, sy))
    iy = (torch.arange(h, device=dev)[None, :] + ty.to(dev)[:, None])  # (b, h)
    ix = (torch.arange(w, device=dev)[None, :] + tx.to(dev)[:, None])  # (b, w)
    x = pad[torch.arange(b, device=dev)[:, None, None], :, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
    # cutout: one zeroed rectangle of half each side (a quarter of the area)
    ch, cw = h // 2, w // 2
    cy = (r(b) * (h + 1 - ch)).long().to(dev)
    cx = (r(b) * (w + 1 - cw)).long().to(dev)
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    keep = ~(((yy >= cy[:, None, None]) & (yy < cy[:, None, None] + ch)) & ((xx >= cx[:, None, None]) & (xx < cx[:, None, None] + cw)))
    return x * keep[:, None].to(x.dtype)
