"""Training data: photos from ``../shared/datasets/train`` (never Kodak), cached in RAM.

Decoding a JPEG costs far more than cropping one, so every photo is decoded once (and the larger
ones downscaled so the long side is at most ``max_side``, close to Kodak's scale), then batches
are random crops with mild scale jitter and flips. The cache is built before the DataLoader forks,
so worker processes share it copy-on-write and never decode.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def list_images(root: Path) -> list[Path]:
    """All image files under ``root``, sorted (deterministic order)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if any("kodak" in p.parts for p in files):
        raise ValueError("refusing to train on Kodak: it is the evaluation set")
    return files


def split_holdout(files: list[Path], n_val: int) -> tuple[list[Path], list[Path]]:
    """A fixed validation subset chosen by a hash of the file stem (stable as the set grows).

    The stem, not the name, so that a re-encoded copy (``vqc pack-data``: PNGs become JPEGs for
    the accelerator) holds out the same photos. At most a quarter of the files are held out, so a
    tiny folder still leaves training data.
    """
    n_val = min(n_val, len(files) // 4)
    keyed = sorted(files, key=lambda p: hashlib.sha256(p.stem.encode()).hexdigest())
    val = set(keyed[:n_val])
    return [p for p in files if p not in val], [p for p in files if p in val]


def load_rgb(path: Path, max_side: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        s = max(im.size) / max_side
        if s > 1:
            im = im.resize((round(im.width / s), round(im.height / s)), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


class CropStream(torch.utils.data.IterableDataset):
    """Endless random crops (uint8 -> float in [-1,1], (3,S,S)) from RAM-cached photos.

    Args:
        images: decoded photos (H, W, 3) uint8.
        size: crop side in pixels.
        scale: (lo, hi) range of the rescale factor applied to each crop's source window.
        seed: base seed; each worker derives its own stream from it.
    """

    def __init__(self, images: list[np.ndarray], size: int, scale=(0.7, 1.0), seed: int = 0) -> None:
        super().__init__()
        self.images = images
        self.size = size
        self.scale = scale
        self.seed = seed

    def crop(self, rng: random.Random) -> torch.Tensor:
        img = self.images[rng.randrange(len(self.images))]
        h, w = img.shape[:2]
        s = rng.uniform(*self.scale)
        win = min(h, w, max(self.size, round(self.size / s)))
        y, x = rng.randint(0, h - win), rng.randint(0, w - win)
        patch = img[y : y + win, x : x + win]
        if win != self.size:
            patch = np.asarray(Image.fromarray(patch).resize((self.size, self.size), Image.Resampling.BICUBIC))
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        t = torch.from_numpy(np.array(patch)).permute(2, 0, 1).float()
        return t / 127.5 - 1.0

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rng = random.Random(self.seed * 1000 + wid)
        while True:
            yield self.crop(rng)


def center_crops(images: list[np.ndarray], size: int) -> torch.Tensor:
    """Deterministic validation batch: the centre square of each photo, resized to ``size``."""
    out = []
    for img in images:
        h, w = img.shape[:2]
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        sq = Image.fromarray(img[y : y + s, x : x + s]).resize((size, size), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.array(sq)).permute(2, 0, 1).float() / 127.5 - 1.0)
    return torch.stack(out)
