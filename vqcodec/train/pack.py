"""Pack what training needs into one small folder that can travel to an accelerator machine.

A remote GPU machine may get the repository and at most 64 MiB of carried files, not ``../shared``
(115 MB of photos, 59 MB of VGG weights) and maybe not the ``lpips`` wheel. This writes:

- ``<out>/train/<subfolder>/<stem>.jpg``: every training photo (never Kodak), long side at most
  ``--max-side`` (640: the whole carry, repository included, must stay under 64 MiB), JPEG quality
  ``--quality`` (85). The hold-out split hashes file
  stems, so the packed copy holds out the same photos as the original folder.
- ``<out>/weights/``: the VGG16 layers the LPIPS-VGG training loss uses (up to relu3_3), fp16,
  and LPIPS v0.1's VGG linear layers (``weights/lpips/weights/v0.1/vgg.pth``), found by
  ``vqcodec.perceptual`` through ``VQC_WEIGHTS``.

    vqc pack-data --out .carry             # 36 MiB for the 704 photos and the weights
    # on the accelerator:  VQC_WEIGHTS=.carry/weights vqc train --data .carry/train --device cuda ...
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from PIL import Image

from vqcodec.perceptual import _TAPS, _WEIGHT_FILES, _package_data, weights_dir
from vqcodec.train.data import list_images


def pack_photos(data: Path, out: Path, max_side: int = 768, quality: int = 90) -> int:
    """Re-encode every photo under ``data`` into ``out`` (same subfolders and stems); returns bytes."""
    total = 0
    for src in list_images(data):
        dst = out / src.relative_to(data).with_suffix(".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im = im.convert("RGB")
            scale = max_side / max(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
            im.save(dst, quality=quality)
        total += dst.stat().st_size
    return total


def pack_weights(out: Path, layers: int = 3, wdir: Path | None = None) -> int:
    """The VGG16 layers that ``layers`` LPIPS taps need (fp16) and LPIPS's VGG linear layers."""
    out.mkdir(parents=True, exist_ok=True)
    sd = torch.load((wdir or weights_dir()) / _WEIGHT_FILES["vgg"], map_location="cpu", weights_only=True)
    last = _TAPS["vgg"][layers - 1]  # features[:last] are used
    keep = {k: v.half() for k, v in sd.items() if int(k.split(".")[1]) < last}
    torch.save(keep, out / _WEIGHT_FILES["vgg"])
    lin = out / "lpips" / "weights" / "v0.1" / "vgg.pth"
    lin.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_package_data("lpips", "weights", "v0.1", "vgg.pth"), lin)
    return (out / _WEIGHT_FILES["vgg"]).stat().st_size + lin.stat().st_size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vqc pack-data", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/datasets/train")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--lpips-layers", type=int, default=3, help="LPIPS-VGG taps the training loss uses")
    args = ap.parse_args(argv)
    photos = pack_photos(args.data, args.out / "train", args.max_side, args.quality)
    weights = pack_weights(args.out / "weights", args.lpips_layers)
    print(f"wrote {args.out}: photos {photos / 2**20:.1f} MiB, weights {weights / 2**20:.1f} MiB")
