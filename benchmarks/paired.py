"""Paired per-photo comparison of two runs of ``evaluate.py`` (their ``*_images.csv``).

Why: on 8 held-out photos the per-photo LPIPS differences between two close models spread about
+-0.015, so a difference of means says little on its own. Pairing by photo removes the photos'
own difficulty; the standard error of the paired mean says whether a gain is more than noise.
The rule the project ships by: a candidate is *clearly better* when its paired mean
LPIPS-Alex is lower by more than two standard errors at K=8 and at K=64, the two targets' rates.

    python benchmarks/paired.py bench_out/ho_gan2/eval_vqc-gan2_c3b93f6c_holdout_images.csv \
        bench_out/ho_books/eval_vqc-gan3_*_holdout_images.csv
    python benchmarks/paired.py BASE.csv CAND.csv --equal-bpp

``--equal-bpp`` is for candidates whose index maps differ (a retrained encoder, another
quantizer): the same K then costs other bytes, so each photo's candidate scores are interpolated
(linearly in log bpp, between the candidate's neighbouring K) at the base's bpp for that photo
and K before pairing; a base point outside the candidate's bpp range is left out. ``block_de``
(colour and layout, ``vqcodec.metrics``) is compared where both CSVs have it: a candidate that
is worse on it by more than two standard errors at K=8 or 64 is not shipped either.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from pathlib import Path

METRICS = ("lpips", "dists", "psnr", "block_de", "bpp")
LOWER_IS_BETTER = {"lpips": True, "dists": True, "psnr": False, "block_de": True, "bpp": True}


def read(path: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(image, K) -> metric values of one per-image CSV (``block_de`` only where the CSV has it)."""
    with open(path, newline="") as f:
        return {(r["image"], int(r["K"])): {m: float(r[m]) for m in METRICS if r.get(m) not in (None, "")}
                for r in csv.DictReader(f)}  # fmt: skip


def at_equal_bpp(base: dict, cand: dict) -> dict[tuple[str, int], dict[str, float]]:
    """The candidate's scores interpolated at each base point's bpp, photo by photo (linear in
    log bpp between the two candidate points around it); points outside its range are dropped."""
    out = {}
    for (img, k), b in base.items():
        pts = sorted(((v["bpp"], v) for (i, _), v in cand.items() if i == img), key=lambda p: p[0])
        for (x0, v0), (x1, v1) in zip(pts, pts[1:], strict=False):
            if x0 <= b["bpp"] <= x1 and x1 > x0:
                t = (math.log(b["bpp"]) - math.log(x0)) / (math.log(x1) - math.log(x0))
                out[(img, k)] = {m: v0[m] + t * (v1[m] - v0[m]) for m in v0 if m in v1} | {"bpp": b["bpp"]}
                break
    return out


def compare(base: dict, cand: dict, metric: str) -> dict[int, dict[str, float]]:
    """Per K: paired mean difference (candidate - base), its standard error, and on how many
    photos the candidate is better, over the (image, K) pairs both runs scored."""
    out: dict[int, dict[str, float]] = {}
    for k in sorted({k for _, k in base}):
        diffs = [cand[key][metric] - base[key][metric] for key in base
                 if key[1] == k and key in cand and metric in cand[key] and metric in base[key]]  # fmt: skip
        if not diffs:
            continue
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        better = sum((d < 0) if LOWER_IS_BETTER[metric] else (d > 0) for d in diffs)
        out[k] = {"n": len(diffs), "mean": statistics.fmean(diffs), "se": se, "better": better}
    return out


def clearly_better(lpips: dict[int, dict[str, float]], ks: tuple[int, ...] = (8, 64)) -> bool:
    """The shipping rule: LPIPS lower by more than two standard errors at every K in ``ks``."""
    return all(k in lpips and lpips[k]["mean"] < -2 * lpips[k]["se"] for k in ks)


def colour_worse(block_de: dict[int, dict[str, float]], ks: tuple[int, ...] = (8, 64)) -> list[int]:
    """The K (of ``ks``) where the candidate's block colour error is higher by more than 2 SE."""
    return [k for k in ks if k in block_de and block_de[k]["mean"] > 2 * block_de[k]["se"]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path, help="per-image CSV of the shipped model")
    ap.add_argument("candidate", type=Path, help="per-image CSV of the candidate")
    ap.add_argument("--equal-bpp", action="store_true",
                    help="interpolate the candidate at the base's bpp per photo (index maps that differ)")
    args = ap.parse_args(argv)
    base, cand = read(args.base), read(args.candidate)
    if args.equal_bpp:
        cand = at_equal_bpp(base, cand)
        print("candidate interpolated at the base's bpp, photo by photo (linear in log bpp)")
    results = {m: compare(base, cand, m) for m in METRICS if not (args.equal_bpp and m == "bpp")}
    print("metric  K     n  mean diff (cand - base)   2 SE    candidate better on")
    for m, per_k in results.items():
        for k, r in per_k.items():
            print(f"{m:6s} {k:5d} {r['n']:3d}  {r['mean']:+.4f}                  {2 * r['se']:.4f}  {r['better']} of {r['n']}")
    verdict = "clearly better" if clearly_better(results["lpips"]) else "not clearly better"
    print(f"verdict (LPIPS-Alex lower by > 2 SE at K=8 and K=64): {verdict}")
    if worse := colour_worse(results.get("block_de", {})):
        print(f"colour and layout (block_de) worse by > 2 SE at K = {worse}: not shippable")


if __name__ == "__main__":
    main()
