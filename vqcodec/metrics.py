"""Image quality metrics with one documented definition each (see docs/metrics.md).

All take two (H, W, 3) uint8 RGB images at full resolution (no resizing, no cropping):

- ``psnr``: 10 log10(255^2 / MSE) over all RGB samples, 8-bit values.
- ``ms_ssim``: pytorch-msssim's MS-SSIM on RGB, data_range 255, 5 scales, 11x11 Gaussian window;
  undefined (NaN) for images under 161 px on a side, which 5 scales cannot cover.
- ``lpips_alex``: LPIPS v0.1 with AlexNet, inputs scaled to [-1, 1] (the headline metric).
- ``dists``: DISTS, inputs in [0, 1].
- ``block_de``: colour and layout carried, not invented: the mean CIE76 colour difference (CIELAB,
  D65) between the two images' 16x16-block mean colours (averaged in linear light, the colour a
  block has seen from afar; full blocks only). Texture the decoder draws does not move it; a block
  of the wrong colour, or a shape in the wrong place, does. 0 for identical images.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None].float()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (5 scales, standard weights); NaN when a side is under 161 px."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(a.shape[:2]) <= 160:
        return float("nan")
    return float(_ms_ssim(_t(a), _t(b), data_range=255, size_average=True))


@lru_cache(maxsize=1)
def _lpips_alex():
    from vqcodec.perceptual import LPIPS

    return LPIPS("alex")


@lru_cache(maxsize=1)
def _dists():
    from vqcodec.perceptual import DISTS

    return DISTS()


@torch.inference_mode()
def lpips_alex(a: np.ndarray, b: np.ndarray) -> float:
    return float(_lpips_alex()(_t(a) / 127.5 - 1, _t(b) / 127.5 - 1)[0])


@torch.inference_mode()
def dists(a: np.ndarray, b: np.ndarray) -> float:
    return float(_dists()(_t(a) / 255, _t(b) / 255)[0])


_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])  # fmt: skip
_D65 = np.array([0.95047, 1.0, 1.08883])


def linear_rgb(img: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> linear-light RGB in [0, 1] (IEC 61966-2-1)."""
    c = img.astype(np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def lab(linear: np.ndarray) -> np.ndarray:
    """Linear RGB (..., 3) -> CIELAB (..., 3), D65 white."""
    t = linear @ _SRGB_TO_XYZ.T / _D65
    d = 6 / 29
    f = np.where(t > d**3, np.cbrt(t), t / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def block_means(img: np.ndarray, block: int = 16) -> np.ndarray:
    """(H, W, 3) uint8 -> (H // block, W // block, 3) mean linear-light colour of each full block."""
    h, w = img.shape[0] // block * block, img.shape[1] // block * block
    lin = linear_rgb(img[:h, :w])
    return lin.reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))


def block_de(a: np.ndarray, b: np.ndarray, block: int = 16) -> float:
    """Mean CIE76 difference of the 16x16-block mean colours; NaN for an image under one block."""
    if min(a.shape[:2]) < block:
        return float("nan")
    return float(np.linalg.norm(lab(block_means(a, block)) - lab(block_means(b, block)), axis=-1).mean())


ALL = {"psnr": psnr, "ms_ssim": ms_ssim, "lpips": lpips_alex, "dists": dists, "block_de": block_de}


def score(a: np.ndarray, b: np.ndarray, which: tuple[str, ...] = tuple(ALL)) -> dict[str, float]:
    return {k: ALL[k](a, b) for k in which}


class Reference:
    """An original image scored against many reconstructions (a codec's settings, recovery methods).

    Its LPIPS-Alex and DISTS features are computed on first use and kept, so each later score runs
    the networks on the reconstruction only: DISTS's VGG16 at full resolution is most of a
    benchmark's time. Scores are exactly those of ``score(original, reconstruction)``.
    """

    def __init__(self, original: np.ndarray) -> None:
        self.original = original
        self._feats: dict[str, list[torch.Tensor]] = {}

    def _ref(self, name: str, net, x: torch.Tensor) -> list[torch.Tensor]:
        if name not in self._feats:
            self._feats[name] = net.feats(x)
        return self._feats[name]

    @torch.inference_mode()
    def score(self, rec: np.ndarray, which: tuple[str, ...] = tuple(ALL)) -> dict[str, float]:
        a = self.original
        out = {}
        for k in which:
            if k == "lpips":
                net = _lpips_alex()
                out[k] = float(net.distance(self._ref(k, net, _t(a) / 127.5 - 1), net.feats(_t(rec) / 127.5 - 1))[0])
            elif k == "dists":
                net = _dists()
                out[k] = float(net.distance(self._ref(k, net, _t(a) / 255), net.feats(_t(rec) / 255))[0])
            else:
                out[k] = ALL[k](a, rec)
        return out
