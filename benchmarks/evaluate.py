"""Score a model bundle on Kodak for every codebook size: bpp, PSNR, MS-SSIM, LPIPS-Alex, DISTS.

bpp counts the whole .vqc file (header and checksum included). Metrics follow docs/metrics.md
(full-resolution RGB). Prints a table, writes a per-image CSV and a per-K summary CSV, and with
``--update-manifest`` stores the per-K means in the bundle's manifest (the weights, hence the model
id, are unchanged).

    python benchmarks/evaluate.py                       # default bundle, all K, 24 Kodak images
    python benchmarks/evaluate.py --ks 64 1024 --limit 8 --model models/vqc-small
    python benchmarks/evaluate.py --holdout --ks 8 64 1024   # the 8 held-out training photos (never Kodak)

``--holdout`` scores the 8 training photos every trainer holds out (``split_holdout``, long side
768): the place where design choices are compared, so that Kodak stays a test set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import codec, metrics  # noqa: E402
from vqcodec.container import CodingMode  # noqa: E402
from vqcodec.imageio import load_image  # noqa: E402
from vqcodec.zoo import MANIFEST, load_model, write_manifest  # noqa: E402

KODAK = REPO.parent / "shared" / "datasets" / "kodak"
TRAIN = REPO.parent / "shared" / "datasets" / "train"


@dataclass
class Photo:
    name: str
    pixels: np.ndarray


def holdout_images(root: Path = TRAIN, max_side: int = 768) -> list[Photo]:
    """The photos every training run holds out (same hash split), at Kodak's scale."""
    from vqcodec.train.data import list_images, load_rgb, split_holdout

    _, val = split_holdout(list_images(root), 8)
    return [Photo(p.name, load_rgb(p, max_side)) for p in val]
FIELDS = ["bpp", "psnr", "ms_ssim", "lpips", "dists", "block_de"]


def evaluate(bundle, images: list[Path], ks: list[int], progress=True, mode=None) -> list[dict]:
    rows = []
    for k in ks:
        t0 = time.time()
        for p in images:
            img = p.pixels if hasattr(p, "pixels") else load_image(p).pixels
            data = codec.encode(img, k, bundle, mode=mode)
            rec = codec.decode(data, bundle)
            row = {"image": Path(str(p.name)).name, "K": k, "bytes": len(data), "bpp": len(data) * 8 / (img.shape[0] * img.shape[1])}
            row.update(metrics.score(img, rec))
            rows.append(row)
        if progress:
            m = summarize([r for r in rows if r["K"] == k])[0]
            print(f"K={k:5d}  " + "  ".join(f"{f}={m[f]:.4f}" for f in FIELDS) + f"  ({time.time() - t0:.0f}s)",
                  flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for k in sorted({r["K"] for r in rows}):
        sel = [r for r in rows if r["K"] == k]
        out.append({"K": k, "n": len(sel), **{f: float(np.mean([r[f] for r in sel])) for f in FIELDS}})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="bundle name or folder (default: the default bundle)")
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--ks", type=int, nargs="*", default=None, help="codebook sizes (default: all)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out")
    ap.add_argument("--update-manifest", action="store_true")
    ap.add_argument("--holdout", action="store_true", help="the 8 held-out training photos instead of --data")
    ap.add_argument("--entropy", choices=["auto", "static", "exact", "context"], default="auto",
                    help="coding mode (auto: the codec's choice); static compares index maps of two encoders "
                         "fairly when one's context model was trained on the other's maps")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("VQC_THREADS", "0")))
    args = ap.parse_args(argv)
    if args.update_manifest and args.entropy != "auto":
        raise SystemExit("--update-manifest stores the scores of the codec's own choice of coding: no --entropy")
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    images = holdout_images() if args.holdout else sorted(args.data.glob("*.png"))
    if args.limit:
        images = images[: args.limit]
    if not images:
        raise SystemExit(f"no PNG images in {args.data}")
    if args.holdout:
        args.data = TRAIN / "(held out)"
    ks = args.ks or bundle.codebook_sizes
    print(f"model {bundle.name} ({bundle.manifest['model_id']}), {len(images)} images from {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for k in ks:  # results are written after every K, so a stopped run keeps what it measured
        rows += evaluate(bundle, images, [k], mode=None if args.entropy == "auto" else CodingMode[args.entropy.upper()])
        summary = write(rows, bundle, images, args)
    print("\n| K | bpp | PSNR dB | MS-SSIM | LPIPS-Alex | DISTS | block ΔE |\n|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['K']} | {s['bpp']:.4f} | {s['psnr']:.2f} | {s['ms_ssim']:.4f} | {s['lpips']:.4f} | {s['dists']:.4f} "
              f"| {s['block_de']:.2f} |")  # fmt: skip


def write(rows: list[dict], bundle, images: list[Path], args) -> list[dict]:
    summary = summarize(rows)
    tag = f"{bundle.name}_{bundle.manifest['model_id']}" + ("_holdout" if args.holdout else "")
    tag += f"_{args.entropy}" if args.entropy != "auto" else ""
    with open(args.out / f"eval_{tag}_images.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "K", "bytes", *FIELDS])
        w.writeheader()
        w.writerows(rows)
    with open(args.out / f"eval_{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["K", "n", *FIELDS])
        w.writeheader()
        w.writerows(summary)
    if args.update_manifest:
        path = bundle.path / MANIFEST
        man = json.loads(path.read_text())
        key = "holdout_scores" if args.holdout else "scores"
        man.setdefault(key, {})
        for s in summary:
            man[key][str(s["K"])] = {f: round(s[f], 5) for f in FIELDS} | {"images": s["n"]}
        man[key]["dataset"] = (f"the {len(images)} held-out training photos (long side 768); benchmarks/evaluate.py "
                               "--holdout" if args.holdout else
                               f"Kodak ({len(images)} images), full-resolution RGB; benchmarks/evaluate.py")  # fmt: skip
        write_manifest(bundle.path, man)
    return summary


if __name__ == "__main__":
    main()
