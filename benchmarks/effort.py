"""The encoder-effort curve: encode time and picture quality at each ``--effort``, at the same K.

    python benchmarks/effort.py --holdout --ks 8 64 1024 --efforts 1 2 3 4 5   # choose settings here
    python benchmarks/effort.py --ks 8 64 1024 --efforts 1 3 5                 # then Kodak, once

For every photo, K and effort level: the file's bytes and bpp, the encode time (one process, the
model and the loss network loaded first, so the first photo pays no start-up), and LPIPS-Alex,
DISTS and the block colour error of the decoded picture. The summary pairs each level with
effort 1 on the same photo and K: the mean difference with two standard errors, and the bytes
against effort 1's (which the search must not exceed per file). ``--holdout`` uses the 8
training photos every trainer holds out: settings are chosen there, never on Kodak.
Writes ``<out>/effort_<set>_images.csv`` (per photo) and ``<out>/effort_<set>.csv`` (summary).
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from evaluate import Photo, holdout_images  # noqa: E402

from vqcodec import codec, metrics  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


def kodak_images(root: Path = KODAK) -> list[Photo]:
    from PIL import Image

    return [Photo(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in sorted(root.glob("*.png"))]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(photos: list[Photo], ks: list[int], efforts: list[int], model: str | None) -> list[dict]:
    bundle = load_model(model)
    warm = photos[0].pixels[:64, :96]
    for e in sorted(set(efforts)):  # load the loss network, create the kernels: not the first photo's time
        codec.compress(np.ascontiguousarray(warm), bundle, ks[0], effort=e)
    rows = []
    for ph in photos:
        h, w = ph.pixels.shape[:2]
        for k in ks:
            for e in efforts:
                t = time.perf_counter()
                data, enc = codec.compress(ph.pixels, bundle, k, effort=e)
                seconds = time.perf_counter() - t
                out = codec.synthesize(enc, bundle)
                rows.append({"image": ph.name, "K": k, "effort": e, "bytes": len(data), "bpp": 8 * len(data) / (w * h),
                             "seconds": seconds, "lpips": metrics.lpips_alex(ph.pixels, out),
                             "dists": metrics.dists(ph.pixels, out), "block_de": metrics.block_de(ph.pixels, out)})  # fmt: skip
                r = rows[-1]
                print(f"{ph.name:14s} K={k:<5d} effort {e}: {r['bytes']:6d} B {seconds:6.1f} s  LPIPS {r['lpips']:.4f}"
                      f"  DISTS {r['dists']:.4f}  block dE {r['block_de']:.2f}", flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (K, effort): means, and paired differences to effort 1 (mean, 2 SE)."""
    base = {(r["image"], r["K"]): r for r in rows if r["effort"] == 1}
    out = []
    for k in sorted({r["K"] for r in rows}):
        for e in sorted({r["effort"] for r in rows}):
            sel = [r for r in rows if r["K"] == k and r["effort"] == e and (r["image"], k) in base]
            if not sel:
                continue
            s = {"K": k, "effort": e, "images": len(sel), "seconds": statistics.fmean(r["seconds"] for r in sel),
                 "bpp": statistics.fmean(r["bpp"] for r in sel),
                 "bytes_vs_effort1": sum(r["bytes"] for r in sel) / sum(base[(r["image"], k)]["bytes"] for r in sel) - 1,
                 "over_budget": sum(r["bytes"] > base[(r["image"], k)]["bytes"] for r in sel)}  # fmt: skip
            for m in ("lpips", "dists", "block_de"):
                d = [r[m] - base[(r["image"], k)][m] for r in sel]
                s[m] = statistics.fmean(r[m] for r in sel)
                s[f"d_{m}"] = statistics.fmean(d)
                s[f"se2_{m}"] = 2 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
            out.append(s)
    return out


def bd_rates(summary: list[dict], rd_summary: Path, anchors=("VVC", "BPG")) -> list[dict]:
    """BD-rate (LPIPS-Alex, DISTS) of each effort level's curve (its K points, mean bpp and
    metric over the photos) against the anchors' curves in ``rd.py``'s summary, same photos."""
    from bdrate import bd_rate

    with open(rd_summary, newline="") as f:
        rd = list(csv.DictReader(f))
    out = []
    for e in sorted({s["effort"] for s in summary}):
        pts = sorted((s for s in summary if s["effort"] == e), key=lambda s: s["bpp"])
        for anchor in anchors:
            a = sorted((r for r in rd if r["codec"] == anchor), key=lambda r: float(r["bpp"]))
            if not a or len(pts) < 2:
                continue
            row = {"effort": e, "anchor": anchor}
            for m in ("lpips", "dists"):
                res = bd_rate([float(r["bpp"]) for r in a], [float(r[m]) for r in a],
                              [p["bpp"] for p in pts], [p[m] for p in pts], lower_is_better=True)  # fmt: skip
                row[m] = res.value
            out.append(row)
    return out


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.5f}" if isinstance(v, float) else v for k, v in r.items()})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--holdout", action="store_true", help="the 8 held-out training photos instead of Kodak")
    ap.add_argument("--data", type=Path, default=KODAK, help="a folder of PNGs (default: Kodak)")
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 64, 1024])
    ap.add_argument("--efforts", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--images", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench_out/effort"))
    ap.add_argument("--rd-summary", type=Path, default=Path(__file__).parents[1] / "docs" / "rd" / "rd_summary.csv",
                    help="rd.py's summary on the same photos: BD-rates of each effort level against VVC and BPG")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if 1 not in args.efforts:
        args.efforts = [1, *args.efforts]
    photos = holdout_images() if args.holdout else kodak_images(args.data)
    photos = photos[: args.images] if args.images else photos
    name = "holdout" if args.holdout else args.data.name
    print(f"{len(photos)} photos ({name}), {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    rows = run(photos, args.ks, args.efforts, args.model)
    write(args.out / f"effort_{name}_images.csv", rows)
    summary = summarize(rows)
    write(args.out / f"effort_{name}.csv", summary)
    print("\n| K | effort | encode s | bpp | bytes vs effort 1 | LPIPS-Alex (d, 2 SE) | DISTS (d, 2 SE) | block dE (d, 2 SE) |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['K']} | {s['effort']} | {s['seconds']:.1f} | {s['bpp']:.4f} | {100 * s['bytes_vs_effort1']:+.1f} % | "
              f"{s['lpips']:.4f} ({s['d_lpips']:+.4f} +- {s['se2_lpips']:.4f}) | {s['dists']:.4f} ({s['d_dists']:+.4f} +- "
              f"{s['se2_dists']:.4f}) | {s['block_de']:.2f} ({s['d_block_de']:+.2f} +- {s['se2_block_de']:.2f}) |")  # fmt: skip
    if not args.holdout and args.rd_summary.is_file() and len(args.ks) > 1:
        bd = bd_rates(summary, args.rd_summary)
        write(args.out / f"effort_{name}_bdrate.csv", bd)
        print(f"\nBD-rate over K = {', '.join(map(str, args.ks))} (mean curves) against {args.rd_summary}:")
        for r in bd:
            print(f"effort {r['effort']} vs {r['anchor']}: LPIPS {r['lpips']:+.1f} %, DISTS {r['dists']:+.1f} %")


if __name__ == "__main__":
    main()
