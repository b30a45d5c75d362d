"""BD-rate on curves with a known answer."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bdrate import bd_quality, bd_rate  # noqa: E402

RATES = np.array([0.01, 0.02, 0.04, 0.08, 0.16])
PSNR = 20 + 3 * np.log2(RATES / 0.01)  # +3 dB per doubling


def test_identical_curves_give_zero():
    assert bd_rate(RATES, PSNR, RATES, PSNR).value == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 2.0])
def test_scaled_rate_gives_exact_percentage(factor):
    r = bd_rate(RATES, PSNR, RATES * factor, PSNR)
    assert r.value == pytest.approx((factor - 1) * 100, rel=1e-9)
    assert (r.lo, r.hi) == pytest.approx((PSNR[0], PSNR[-1]))


def test_quality_shift_gives_rate_saving_and_bd_psnr():
    # +3 dB everywhere on a 3 dB/doubling curve = half the rate over the overlap
    r = bd_rate(RATES, PSNR, RATES, PSNR + 3)
    assert r.value == pytest.approx(-50, rel=1e-9)
    assert r.lo == pytest.approx(PSNR[0] + 3) and r.hi == pytest.approx(PSNR[-1])
    assert bd_quality(RATES, PSNR, RATES, PSNR + 3).value == pytest.approx(3, rel=1e-9)


def test_lower_is_better_metric():
    lp = 0.6 - 0.1 * np.log2(RATES / 0.01)
    r = bd_rate(RATES, lp, RATES * 0.5, lp, lower_is_better=True)
    assert r.value == pytest.approx(-50, rel=1e-9)
    assert r.lo == pytest.approx(lp[0]) and r.hi == pytest.approx(lp[-1])


def test_no_overlap_is_nan():
    assert math.isnan(bd_rate(RATES, PSNR, RATES, PSNR + 100).value)
    assert math.isnan(bd_rate(RATES[:1], PSNR[:1], RATES, PSNR).value)
