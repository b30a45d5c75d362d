"""Perceptual networks (LPIPS with AlexNet or VGG16 backbones, DISTS), offline, without torchvision.

The backbones are plain ``nn.Sequential`` copies of torchvision's ``.features`` so that the
state dicts in ``../shared/weights/`` (keys ``features.N.weight``) load unchanged. LPIPS v0.1's
linear layers come from the ``lpips`` wheel (its ``weights/v0.1/*.pth`` data files, read without
importing the package, whose import needs torchvision). DISTS's alpha/beta come from the
``DISTS_pytorch`` wheel (``weights.pt``), read the same way.

LPIPS-Alex is the project's headline *metric* and must never be used as a training loss;
LPIPS-VGG (optionally cut after relu3_3 to save compute) is the training loss.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# index (exclusive) of the torchvision features slice that ends at each LPIPS tap
_TAPS = {"vgg": [4, 9, 16, 23, 30], "alex": [2, 5, 8, 10, 12]}
_CHANNELS = {"vgg": [64, 128, 256, 512, 512], "alex": [64, 192, 384, 256, 256]}
_WEIGHT_FILES = {
    "vgg": "vgg16_features_torchvision_IMAGENET1K_V1.pth",
    "alex": "alexnet_features_torchvision_IMAGENET1K_V1.pth",
}


def weights_dir() -> Path:
    """Where the backbone weights live: ``$VQC_WEIGHTS`` or ``../shared/weights`` of the repo."""
    env = os.environ.get("VQC_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "weights"


def _package_data(package: str, *parts: str) -> Path:
    """A data file of an installed package, or its copy in ``weights_dir()/<package>/`` (what
    ``vqc pack-data`` writes for a machine without the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        copy = weights_dir().joinpath(package, *parts)
        if copy.is_file():
            return copy
        raise FileNotFoundError(f"package {package!r} is not installed (pip install 'vqcodec[metrics]')")
    return Path(list(spec.submodule_search_locations)[0], *parts)


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU()]
            c = int(v)
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )  # fmt: skip


def load_backbone(net: str, wdir: Path | None = None) -> nn.Sequential:
    """torchvision-compatible ``features`` with ImageNet weights from the shared folder, frozen."""
    feats = vgg16_features() if net == "vgg" else alexnet_features()
    path = (wdir or weights_dir()) / _WEIGHT_FILES[net]
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path} (set VQC_WEIGHTS)")
    sd = {k.split(".", 1)[1]: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    # a packed copy (vqc pack-data) keeps only the first layers, in fp16: cut the network there
    depth = max(int(k.split(".")[0]) for k in sd) + 2  # the ReLU after the last conv
    feats = feats[:depth] if depth < len(feats) else feats
    feats.load_state_dict(sd)
    feats.eval().requires_grad_(False)
    return feats.float()


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018). Inputs (B,3,H,W) RGB in [-1,1]; returns (B,) distances.

    Args:
        net: "alex" (the metric) or "vgg" (the training loss).
        layers: how many of the 5 taps to use; 3 cuts VGG after relu3_3 (cheaper training loss).
    """

    def __init__(self, net: str = "alex", layers: int = 5, wdir: Path | None = None,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:  # fmt: skip
        super().__init__()
        if net not in _TAPS or not 1 <= layers <= 5:
            raise ValueError("net must be 'alex' or 'vgg' and layers in 1..5")
        taps = _TAPS[net][:layers]
        if tensors is None:  # the shared weights folder
            feats = load_backbone(net, wdir)
        else:  # torchvision's own network (``vqcodec.loss_weights``): its ``features.N.*`` tensors
            feats = (vgg16_features() if net == "vgg" else alexnet_features())[: taps[-1]]
            feats.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in tensors.items() if k.startswith("features.")})
            feats.eval().requires_grad_(False)
        lin = torch.load(_package_data("lpips", "weights", "v0.1", f"{net}.pth"), map_location="cpu", weights_only=True)
        lins = [lin[f"lin{i}.model.1.weight"] for i in range(layers)]
        if len(feats) < taps[-1]:
            raise ValueError(f"the {net} weights found stop at layer {len(feats)}: {layers} LPIPS taps need {taps[-1]}")
        self.features = feats[: taps[-1]]
        self.taps = taps
        self.lins = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in lins])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval()

    def feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped activations of ``x``: computed once for an image compared many times."""
        out = []
        h = (x - self.shift) / self.scale
        start = 0
        for t in self.taps:
            h = self.features[start:t](h)
            out.append(h)
            start = t
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(self.feats(x), self.feats(y))

    def distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS from the ``feats`` of both images."""
        total = torch.zeros(fx[0].shape[0], device=fx[0].device, dtype=fx[0].dtype)
        for a, b, w in zip(fx, fy, self.lins, strict=True):
            d = (_unit(a) - _unit(b)) ** 2
            total = total + F.conv2d(d, w).mean(dim=(1, 2, 3))
        return total


class _L2Pool(nn.Module):
    """DISTS's anti-aliased L2 pooling (Hanning 5x5 without its zero ends, stride 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]
        g = (a[:, None] * a[None, :]).float()
        self.register_buffer("filter", (g / g.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS (Ding et al. 2020). Inputs (B,3,H,W) RGB in [0,1]; returns (B,) scores.

    VGG16 with max-pools replaced by L2 pooling; alpha/beta from the ``DISTS_pytorch`` wheel.
    """

    def __init__(self, wdir: Path | None = None) -> None:
        super().__init__()
        vgg = load_backbone("vgg", wdir)
        if len(vgg) < 30:
            raise ValueError(f"DISTS needs all 13 VGG16 conv layers; the weights found stop at layer {len(vgg)}")
        cuts = [(0, 4), (5, 9), (10, 16), (17, 23), (24, 30)]
        chans = [64, 128, 256, 512]
        stages = []
        for i, (a, b) in enumerate(cuts):
            mods = [] if i == 0 else [_L2Pool(chans[i - 1])]
            stages.append(nn.Sequential(*mods, *vgg[a:b]))
        self.stages = nn.ModuleList(stages)
        w = torch.load(_package_data("DISTS_pytorch", "weights.pt"), map_location="cpu", weights_only=True)
        self.register_buffer("alpha", w["alpha"])
        self.register_buffer("beta", w["beta"])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.chns = [3, 64, 128, 256, 512, 512]
        self.eval().requires_grad_(False)

    def feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input and the five stages' activations of ``x`` (VGG16 at full resolution is most of
        DISTS's cost: an image compared many times has them computed once)."""
        out = [x]
        h = (x - self.mean) / self.std
        for s in self.stages:
            h = s(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(self.feats(x), self.feats(y))

    def distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """DISTS from the ``feats`` of both images."""
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, self.chns, dim=1)
        beta = torch.split(self.beta / w_sum, self.chns, dim=1)
        d1 = d2 = 0.0
        c = 1e-6
        for k in range(len(self.chns)):
            mx, my = fx[k].mean([2, 3], keepdim=True), fy[k].mean([2, 3], keepdim=True)
            s1 = (2 * mx * my + c) / (mx**2 + my**2 + c)
            vx = ((fx[k] - mx) ** 2).mean([2, 3], keepdim=True)
            vy = ((fy[k] - my) ** 2).mean([2, 3], keepdim=True)
            cov = (fx[k] * fy[k]).mean([2, 3], keepdim=True) - mx * my
            s2 = (2 * cov + c) / (vx + vy + c)
            d1 = d1 + (alpha[k] * s1).sum(1, keepdim=True)
            d2 = d2 + (beta[k] * s2).sum(1, keepdim=True)
        return 1 - (d1 + d2).flatten()
