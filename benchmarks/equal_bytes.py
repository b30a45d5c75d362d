"""Crops of vqcodec beside VVC at equal bytes: what "no grid, looks like a photo" means, to the eye.

For each image, vqcodec encodes at ``--k``; VVC (rd_codecs' command: all-intra, slow, QPA on) takes
the QP whose file size is nearest. A 256 px crop of the original, vqcodec and VVC goes side by
side in one PNG, labelled with bytes and bpp.

    python benchmarks/equal_bytes.py --images kodim23 kodim08 --k 64 --out docs/rd/equal_bytes.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from rd_codecs import VVC  # noqa: E402

KODAK = HERE.parent.parent / "shared" / "datasets" / "kodak"


def vvc_nearest(img: np.ndarray, budget: int) -> tuple[int, int, np.ndarray]:
    """(qp, bytes, reconstruction) of the QP in 63..30 whose file size is nearest ``budget`` bytes
    (VVC's QP steps are 10-20 % apart in bytes here; nearest, not "at most", so neither side gets
    the larger file by construction)."""
    vvc, best = VVC(), None
    for qp in range(63, 29, -1):
        with tempfile.TemporaryDirectory() as tmp:
            n, rec, _, _ = vvc.run(img, qp, Path(tmp))
        if best is None or abs(n - budget) < abs(best[1] - budget):
            best = (qp, n, rec)
        if n > budget:
            break
    return best


def main(argv: list[str] | None = None) -> None:
    import vqcodec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", nargs="*", default=["kodim23", "kodim08"])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "rd" / "equal_bytes.png")
    args = ap.parse_args(argv)
    n = args.crop
    rows = []
    for name in args.images:
        img = vqcodec.load_image(KODAK / f"{name}.png").pixels
        data = vqcodec.encode(img, args.k, args.model)
        ours = vqcodec.decode_array(data)
        qp, vbytes, vrec = vvc_nearest(img, len(data))
        px = img.shape[0] * img.shape[1]
        y0, x0 = (img.shape[0] - n) // 2, (img.shape[1] - n) // 2
        tiles = [(f"{name} original", img), (f"vqcodec K={args.k}: {len(data)} B, {len(data) * 8 / px:.4f} bpp", ours),
                 (f"VVC QP {qp}: {vbytes} B, {vbytes * 8 / px:.4f} bpp", vrec)]  # fmt: skip
        rows.append([(label, t[y0 : y0 + n, x0 : x0 + n]) for label, t in tiles])
        print(f"{name}: vqcodec {len(data)} B, VVC QP {qp} {vbytes} B")
    canvas = Image.new("RGB", ((n + 4) * 3, (n + 24) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for i, (label, t) in enumerate(row):
            canvas.paste(Image.fromarray(np.ascontiguousarray(t)), ((n + 4) * i + 2, (n + 24) * r + 22))
            draw.text(((n + 4) * i + 4, (n + 24) * r + 4), label, fill="black", font_size=11)
    canvas.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
