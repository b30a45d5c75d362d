"""Compare quantizers (plain VQ, LooC, dual codebook) on Kodak at matched bits per position.

Each variant is a bundle (``vqc export`` of a ``vqc train --quantizer ...`` run); all were trained
from the same init for the same steps (docs/history.md says how). For each bundle and K this
encodes and decodes every image through the codec (bpp counts the whole .vqc file), scores PSNR,
MS-SSIM, LPIPS-Alex and DISTS (``metrics.Reference``: the original's features once per image),
times the decode, and counts the codes the Kodak index maps use. A LooC bundle is also scored with
its extrapolation-by-interpolation switched the other way at test time (same weights and books;
on means 4x the index planes).

    python benchmarks/quantizers.py --bundle vq=runs/bundles/vq:64,256,1024 \\
        --bundle looc=runs/bundles/looc:8,16,32 --bundle dual=runs/bundles/dual:8,16,32 --limit 8
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import codec, metrics  # noqa: E402
from vqcodec.imageio import load_image  # noqa: E402
from vqcodec.nets.autoencoder import build_autoencoder  # noqa: E402
from vqcodec.zoo import Bundle, load_model  # noqa: E402

KODAK = REPO.parent / "shared" / "datasets" / "kodak"
FIELDS = ["bits_per_position", "bpp", "psnr", "ms_ssim", "lpips", "dists", "decode_s", "usage"]


def toggled(bundle: Bundle) -> Bundle:
    """The same LooC bundle with extrapolation-by-interpolation switched the other way at test time."""
    cfg = dataclasses.replace(bundle.model.config, extrapolate=not bundle.model.config.extrapolate)
    model = build_autoencoder(cfg)
    model.load_state_dict(bundle.model.state_dict())
    model.eval().requires_grad_(False)
    return dataclasses.replace(bundle, model=model, _transformers={}, planes={})  # m changed: pooled tables


def parameters(bundle: Bundle) -> dict[str, int]:
    m = bundle.model
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    return {"params_total": count(m), "params_quantizer": count(m.quantize),
            "book_floats_at_k0": int(bundle.codebooks[max(bundle.codebooks)].numel())}  # fmt: skip


def evaluate(label: str, bundle: Bundle, ks: list[int], refs: dict, which: tuple[str, ...]) -> list[dict]:
    rows = []
    for k in ks:
        for name, (img, ref) in refs.items():
            enc = codec.analyze(img, bundle, k)
            data = codec.pack(enc, bundle)
            t = time.perf_counter()
            rec = codec.decode(data, bundle)
            dt = time.perf_counter() - t
            used = len(np.unique(enc.indices)) / k
            row = {"variant": label, "K": k, "m": bundle.m, "image": name, "bpp": len(data) * 8 / (img.shape[0] * img.shape[1]),
                   "bits_per_position": bundle.m * np.log2(k), "decode_s": dt, "usage": used}  # fmt: skip
            row.update(ref.score(rec, which))
            rows.append(row)
    return rows


def summarize(rows: list[dict], fields: list[str]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["variant"], r["K"]) for r in rows):
        sel = [r for r in rows if (r["variant"], r["K"]) == key]
        out.append({"variant": key[0], "K": key[1], "m": sel[0]["m"], "n": len(sel),
                    **{f: float(np.mean([r[f] for r in sel])) for f in fields if f in sel[0]}})  # fmt: skip
    return out


def table(summary: list[dict], which: tuple[str, ...]) -> str:
    cols = ["bits_per_position", "bpp", *which, "usage", "decode_s"]
    head = "| variant | K | m | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 3)
    lines = [head]
    for s in summary:
        vals = " | ".join(f"{s[c]:.4f}" if c not in ("bits_per_position", "psnr", "decode_s") else f"{s[c]:.2f}"
                          for c in cols)  # fmt: skip
        lines.append(f"| {s['variant']} | {s['K']} | {s['m']} | {vals} |")
    return "\n".join(lines)


def matched(summary: list[dict], targets: list[float], metric: str) -> dict[str, list[float | None]]:
    """Each variant's ``metric`` at each target bpp, linear in log(bpp) between its two nearest points
    (None outside the bpp range the variant covers)."""
    out = {}
    for variant in dict.fromkeys(s["variant"] for s in summary):
        pts = sorted((s["bpp"], s[metric]) for s in summary if s["variant"] == variant)
        vals = []
        for t in targets:
            v = None
            for (b0, m0), (b1, m1) in zip(pts, pts[1:], strict=False):
                if b0 <= t <= b1:
                    w = (np.log(t) - np.log(b0)) / (np.log(b1) - np.log(b0))
                    v = m0 + w * (m1 - m0)
                    break
            vals.append(v)
        out[variant] = vals
    return out


def matched_table(summary: list[dict], targets: list[float], which: tuple[str, ...]) -> str:
    lines = ["| variant | " + " | ".join(f"{m} @ {t} bpp" for m in which for t in targets) + " |",
             "|---|" + "---|" * (len(which) * len(targets))]  # fmt: skip
    per = {m: matched(summary, targets, m) for m in which}
    for variant in per[which[0]]:
        cells = [per[m][variant][i] for m in which for i in range(len(targets))]
        lines.append(f"| {variant} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


def parse_bundle(spec: str) -> tuple[str, str, list[int]]:
    try:
        label, rest = spec.split("=", 1)
        path, ks = rest.rsplit(":", 1)
        return label, path, [int(k) for k in ks.split(",")]
    except ValueError:
        raise SystemExit(f"--bundle wants label=path:K1,K2,..., got {spec!r}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", action="append", default=[], help="label=bundle-folder:K1,K2,...")
    ap.add_argument("--at", type=float, nargs="*", default=[0.025, 0.032], help="bpp targets of the matched table")
    ap.add_argument("--summary", type=Path, default=None, help="only print the tables of a quantizers.csv")
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--no-dists", action="store_true", help="skip DISTS (the slow metric)")
    ap.add_argument("--no-toggle", action="store_true", help="do not score LooC with extrapolation toggled")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    which = ("psnr", "ms_ssim", "lpips") + (() if args.no_dists else ("dists",))
    if args.summary is not None:
        summary = [
            {k: v if k == "variant" else float(v) for k, v in r.items()} for r in csv.DictReader(open(args.summary))
        ]
        for r in summary:
            r["K"], r["m"] = int(r["K"]), int(r["m"])
        metrics_at = tuple(m for m in ("lpips", "dists", "psnr") if m in which)
        print(table(summary, which) + "\n\n" + matched_table(summary, args.at, metrics_at))
        return
    if not args.bundle:
        raise SystemExit("give at least one --bundle label=folder:K1,K2 (or --summary quantizers.csv)")
    images = sorted(args.data.glob("*.png"))[: args.limit or None]
    if not images:
        raise SystemExit(f"no PNG images in {args.data}")
    refs = {}
    for p in images:
        img = load_image(p).pixels
        refs[p.name] = (img, metrics.Reference(img))
    args.out.mkdir(parents=True, exist_ok=True)
    rows, info = [], []
    for spec in args.bundle:
        label, path, ks = parse_bundle(spec)
        bundle = load_model(path)
        variants = [(label, bundle)]
        if bundle.manifest["quantizer"]["type"] == "looc" and not args.no_toggle:
            other = toggled(bundle)
            variants.append(
                (f"{label} (extrapolate {'on' if other.model.config.extrapolate else 'off'} at test)", other)
            )
        for lab, b in variants:
            t0 = time.time()
            rows += evaluate(lab, b, ks, refs, which)
            q = b.manifest["quantizer"]
            info.append({"variant": lab, "bundle": path, "model_id": b.manifest["model_id"], "quantizer": q["type"],
                         "m": b.m, "train_usage_k0": b.manifest["training"].get("codebook_stats", {}).get(
                             str(max(b.codebooks)), {}).get("usage"), **parameters(b)})  # fmt: skip
            print(f"{lab}: {len(ks)} K x {len(images)} images in {time.time() - t0:.0f}s", flush=True)
            summary = summarize(rows, FIELDS + list(which))
            with open(args.out / "quantizers_images.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            with open(args.out / "quantizers.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(summary[0]))
                w.writeheader()
                w.writerows(summary)
    print(f"\nKodak, {len(images)} images\n")
    print(table(summary, which))
    print("\nAt matched bpp (linear in log bpp between measured points):\n")
    print(matched_table(summary, args.at, tuple(m for m in ("lpips", "dists", "psnr") if m in which)))
    print("\n| variant | quantizer | m | parameters (all) | quantizer parameters | floats in the base book(s) | "
          "train-set usage at base K |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for i in info:
        print(f"| {i['variant']} | {i['quantizer']} | {i['m']} | {i['params_total']} | {i['params_quantizer']} | "
              f"{i['book_floats_at_k0']} | {i['train_usage_k0']} |")  # fmt: skip


if __name__ == "__main__":
    main()
