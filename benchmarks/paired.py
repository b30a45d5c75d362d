"""Paired per-photo comparison of two runs of ``evaluate.py`` (their ``*_images.csv``).

Why: on 8 held-out photos the per-photo LPIPS differences between two close models spread about
+-0.015, so a difference of means says little on its own. Pairing by photo removes the photos'
own difficulty; the standard error of the paired mean says whether a gain is more than noise.
The rule the project ships by (issue 18): a candidate is *clearly better* when its paired mean
LPIPS-Alex is lower by more than two standard errors at K=8 and at K=64, the two targets' rates.

    python benchmarks/paired.py bench_out/ho_gan2/eval_vqc-gan2_c3b93f6c_holdout_images.csv \
        bench_out/ho_books/eval_vqc-gan3_*_holdout_images.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from pathlib import Path

METRICS = ("lpips", "dists", "psnr", "bpp")
LOWER_IS_BETTER = {"lpips": True, "dists": True, "psnr": False, "bpp": True}


def read(path: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(image, K) -> metric values of one per-image CSV."""
    with open(path, newline="") as f:
        return {(r["image"], int(r["K"])): {m: float(r[m]) for m in METRICS} for r in csv.DictReader(f)}


def compare(base: dict, cand: dict, metric: str) -> dict[int, dict[str, float]]:
    """Per K: paired mean difference (candidate - base), its standard error, and on how many
    photos the candidate is better, over the (image, K) pairs both runs scored."""
    out: dict[int, dict[str, float]] = {}
    for k in sorted({k for _, k in base}):
        diffs = [cand[key][metric] - base[key][metric] for key in base if key[1] == k and key in cand]
        if not diffs:
            continue
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        better = sum((d < 0) if LOWER_IS_BETTER[metric] else (d > 0) for d in diffs)
        out[k] = {"n": len(diffs), "mean": statistics.fmean(diffs), "se": se, "better": better}
    return out


def clearly_better(lpips: dict[int, dict[str, float]], ks: tuple[int, ...] = (8, 64)) -> bool:
    """The shipping rule: LPIPS lower by more than two standard errors at every K in ``ks``."""
    return all(k in lpips and lpips[k]["mean"] < -2 * lpips[k]["se"] for k in ks)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path, help="per-image CSV of the shipped model")
    ap.add_argument("candidate", type=Path, help="per-image CSV of the candidate")
    args = ap.parse_args(argv)
    base, cand = read(args.base), read(args.candidate)
    results = {m: compare(base, cand, m) for m in METRICS}
    print("metric  K     n  mean diff (cand - base)   2 SE    candidate better on")
    for m, per_k in results.items():
        for k, r in per_k.items():
            print(f"{m:6s} {k:5d} {r['n']:3d}  {r['mean']:+.4f}                  {2 * r['se']:.4f}  {r['better']} of {r['n']}")
    verdict = "clearly better" if clearly_better(results["lpips"]) else "not clearly better"
    print(f"verdict (LPIPS-Alex lower by > 2 SE at K=8 and K=64): {verdict}")


if __name__ == "__main__":
    main()
