"""Bjøntegaard delta rate (BD-rate) and delta quality, piecewise cubic (PCHIP) interpolation.

BD-rate: the average bitrate difference (in %) of a test codec against an anchor at equal quality,
over the quality range both curves cover. log(rate) is interpolated as a function of quality with
monotone piecewise cubic Hermite polynomials (the "piecewise cubic" variant of VCEG-M33 used by
JVET's reference spreadsheets), integrated over the overlap, averaged and exponentiated. Negative
means the test codec needs fewer bits. For metrics where lower is better (LPIPS, DISTS), the
quality axis is negated first so that it increases with rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator


@dataclass(frozen=True)
class BDResult:
    value: float  # BD-rate in percent (or BD-quality in metric units)
    lo: float  # overlapping quality range used (in the metric's own units)
    hi: float


def _prep(rate, quality, lower_is_better: bool):
    r = np.log(np.asarray(rate, dtype=np.float64))
    q = np.asarray(quality, dtype=np.float64)
    if lower_is_better:
        q = -q
    order = np.argsort(q)
    q, r = q[order], r[order]
    keep = np.concatenate([[True], np.diff(q) > 0])  # PCHIP needs strictly increasing x
    return q[keep], r[keep]


def bd_rate(rate_a, q_a, rate_b, q_b, lower_is_better: bool = False) -> BDResult:
    """BD-rate of curve b (test) against a (anchor), in percent. NaN when the curves do not overlap."""
    qa, ra = _prep(rate_a, q_a, lower_is_better)
    qb, rb = _prep(rate_b, q_b, lower_is_better)
    if len(qa) < 2 or len(qb) < 2:
        return BDResult(float("nan"), float("nan"), float("nan"))
    lo, hi = max(qa[0], qb[0]), min(qa[-1], qb[-1])
    sign = -1 if lower_is_better else 1
    if hi <= lo:
        return BDResult(float("nan"), sign * lo, sign * hi)
    ia = PchipInterpolator(qa, ra).integrate(lo, hi)
    ib = PchipInterpolator(qb, rb).integrate(lo, hi)
    diff = (ib - ia) / (hi - lo)
    return BDResult(float((np.exp(diff) - 1) * 100), sign * lo, sign * hi)


def bd_quality(rate_a, q_a, rate_b, q_b) -> BDResult:
    """Average quality difference of b over a at equal log-rate (BD-PSNR style), b minus a."""
    ra, qa = np.log(np.asarray(rate_a, float)), np.asarray(q_a, float)
    rb, qb = np.log(np.asarray(rate_b, float)), np.asarray(q_b, float)
    oa, ob = np.argsort(ra), np.argsort(rb)
    ra, qa, rb, qb = ra[oa], qa[oa], rb[ob], qb[ob]
    lo, hi = max(ra[0], rb[0]), min(ra[-1], rb[-1])
    if hi <= lo:
        return BDResult(float("nan"), float(np.exp(lo)), float(np.exp(hi)))
    ia = PchipInterpolator(ra, qa).integrate(lo, hi)
    ib = PchipInterpolator(rb, qb).integrate(lo, hi)
    return BDResult(float((ib - ia) / (hi - lo)), float(np.exp(lo)), float(np.exp(hi)))
