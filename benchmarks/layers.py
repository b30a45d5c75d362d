"""Layered (progressive) files against independent single-layer files: bytes received vs picture.

    python benchmarks/layers.py --holdout          # choose settings here
    python benchmarks/layers.py                    # then Kodak, once

For every photo: the single-layer file at each K of the chain (bytes, LPIPS-Alex, DISTS, block
colour error), and one layered file read progressively: at the end of each layer, the bytes
received so far and the picture that prefix decodes to. The summary pairs each prefix with the
single-layer file of its K on the same photo (mean difference, two standard errors) and gives
the prefix's bytes against that file's: what a receiver gets from the first N bytes of one
layered file, against sending an independent file per rate.
Writes ``<out>/layers_<set>_images.csv`` (per photo and layer) and ``<out>/layers_<set>.csv``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from effort import KODAK, cpu_name, kodak_images, write  # noqa: E402
from evaluate import holdout_images  # noqa: E402

from vqcodec import codec, layerfile, metrics, options, progressive  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

METRICS = ("lpips", "dists", "block_de")


def _scores(reference, out) -> dict:
    return {"lpips": metrics.lpips_alex(reference, out), "dists": metrics.dists(reference, out),
            "block_de": metrics.block_de(reference, out)}  # fmt: skip


def run(photos, sizes: tuple[int, ...], model: str | None) -> list[dict]:
    bundle = load_model(model)
    rows = []
    for ph in photos:
        h, w = ph.pixels.shape[:2]
        data, encs = progressive.compress(ph.pixels, bundle, sizes)
        ends = layerfile.scan_layers(data).ends
        for n, k in enumerate(sizes):
            single, enc = codec.compress(ph.pixels, bundle, k)
            rows.append({"image": ph.name, "K": k, "kind": "single", "bytes": len(single),
                         "bpp": 8 * len(single) / (w * h), **_scores(ph.pixels, codec.synthesize(enc, bundle))})  # fmt: skip
            prefix, _, report = codec.unpack_any(data[: ends[n]], bundle)
            assert report.layers_decoded == n + 1
            rows.append({"image": ph.name, "K": k, "kind": "layered", "bytes": ends[n], "bpp": 8 * ends[n] / (w * h),
                         **_scores(ph.pixels, codec.synthesize(prefix, bundle))})  # fmt: skip
            s, p = rows[-2], rows[-1]
            print(f"{ph.name:14s} K={k:<5d} single {s['bytes']:6d} B LPIPS {s['lpips']:.4f} | layered prefix "
                  f"{p['bytes']:6d} B LPIPS {p['lpips']:.4f}", flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per K: means of both kinds, the layered prefix's bytes against the single file's, and the
    paired differences (prefix - single) with two standard errors."""
    single = {(r["image"], r["K"]): r for r in rows if r["kind"] == "single"}
    out = []
    for k in sorted({r["K"] for r in rows}):
        lay = [r for r in rows if r["K"] == k and r["kind"] == "layered"]
        one = [single[(r["image"], k)] for r in lay]
        s = {"K": k, "images": len(lay), "single_bytes": statistics.fmean(r["bytes"] for r in one),
             "layered_bytes": statistics.fmean(r["bytes"] for r in lay),
             "bytes_vs_single": sum(r["bytes"] for r in lay) / sum(r["bytes"] for r in one) - 1}  # fmt: skip
        for m in METRICS:
            d = [a[m] - b[m] for a, b in zip(lay, one, strict=True)]
            s[f"single_{m}"] = statistics.fmean(r[m] for r in one)
            s[f"layered_{m}"] = statistics.fmean(r[m] for r in lay)
            s[f"d_{m}"] = statistics.fmean(d)
            s[f"se2_{m}"] = 2 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
        out.append(s)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--holdout", action="store_true", help="the 8 held-out training photos instead of Kodak")
    ap.add_argument("--data", type=Path, default=KODAK, help="a folder of PNGs (default: Kodak)")
    ap.add_argument("--layers", default="8,64,1024", help="the chain of the layered file")
    ap.add_argument("--images", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench_out/layers"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = options.check_layers(args.layers)
    photos = holdout_images() if args.holdout else kodak_images(args.data)
    photos = photos[: args.images] if args.images else photos
    name = "holdout" if args.holdout else args.data.name
    print(f"{len(photos)} photos ({name}), layers {args.layers}, {cpu_name()}, {args.threads} threads")
    rows = run(photos, sizes, args.model)
    write(args.out / f"layers_{name}_images.csv", rows)
    summary = summarize(rows)
    write(args.out / f"layers_{name}.csv", summary)
    print("\n| K | single-layer file B | layered prefix B (vs single) | LPIPS-Alex single / prefix (d, 2 SE) "
          "| DISTS single / prefix (d, 2 SE) | block dE single / prefix (d, 2 SE) |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        cells = " | ".join(f"{s[f'single_{m}']:.4f} / {s[f'layered_{m}']:.4f} ({s[f'd_{m}']:+.4f} +- {s[f'se2_{m}']:.4f})"
                           for m in METRICS)  # fmt: skip
        print(f"| {s['K']} | {s['single_bytes']:.0f} | {s['layered_bytes']:.0f} ({100 * s['bytes_vs_single']:+.1f} %) "
              f"| {cells} |")  # fmt: skip


if __name__ == "__main__":
    main()
