"""Image quality metrics with one documented definition each (see docs/metrics.md).

All take two (H, W, 3) uint8 RGB images at full resolution (no resizing, no cropping):

- ``psnr``: 10 log10(255^2 / MSE) over all RGB samples, 8-bit values.
- ``ms_ssim``: pytorch-msssim's MS-SSIM on RGB, data_range 255, 5 scales, 11x11 Gaussian window;
  undefined (NaN) for images under 161 px on a side, which 5 scales cannot cover.
- ``lpips_alex``: LPIPS v0.1 with AlexNet, inputs scaled to [-1, 1] (the headline metric).
- ``dists``: DISTS, inputs in [0, 1].
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


ALL = {"psnr": psnr, "ms_ssim": ms_ssim, "lpips": lpips_alex, "dists": dists}


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
