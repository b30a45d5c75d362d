"""Metric code against the official LPIPS-Alex / DISTS values of the shared calibration pairs."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec import metrics
from vqcodec.perceptual import LPIPS, weights_dir

from .conftest import make_image

CAL = weights_dir() / "calibration"
needs_weights = pytest.mark.skipif(not (CAL / "values.csv").exists(), reason="../shared/weights not present")


def load(p):
    return np.array(Image.open(p).convert("RGB"), dtype=np.uint8)


@needs_weights
def test_lpips_alex_and_dists_match_official_values():
    rows = list(csv.DictReader(open(CAL / "values.csv")))
    assert len(rows) == 5
    for r in rows:
        a, b = load(CAL / r["ref_file"]), load(CAL / r["dist_file"])
        assert metrics.lpips_alex(a, b) == pytest.approx(float(r["lpips_alex_here"]), abs=1e-4)
        assert metrics.dists(a, b) == pytest.approx(float(r["dists_here"]), abs=1e-4)
        assert float(r["lpips_alex_official"]) == pytest.approx(float(r["lpips_alex_here"]), abs=1e-4)


@needs_weights
def test_reference_scores_equal_pairwise_scores():
    """metrics.Reference keeps the original's features: same numbers as score(), for every pair."""
    r = next(csv.DictReader(open(CAL / "values.csv")))
    a = load(CAL / r["ref_file"])
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    ref = metrics.Reference(a)
    for b in (load(CAL / r["dist_file"]), noisy, a[::-1].copy()):
        assert ref.score(b) == pytest.approx(metrics.score(a, b), abs=1e-6)
    assert set(ref._feats) == {"lpips", "dists"}


@needs_weights
def test_lpips_vgg_matches_reference_and_has_gradients():
    r = next(csv.DictReader(open(CAL / "values.csv")))
    a, b = load(CAL / r["ref_file"]), load(CAL / r["dist_file"])
    net = LPIPS("vgg")
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        assert net(ta, tb).item() == pytest.approx(float(r["lpips_vgg_here"]), abs=1e-4)
    x = tb[..., :64, :64].clone().requires_grad_(True)
    LPIPS("vgg", layers=3)(x, ta[..., :64, :64]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_psnr_and_ms_ssim_values():
    a = make_image(200, 200)
    assert metrics.psnr(a, a) == float("inf")
    b = a.copy()
    b[0, 0, 0] ^= 1  # one sample off by one: MSE = 1 / (200*200*3)
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255**2 * 120000), rel=1e-9)
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    assert 0 < metrics.ms_ssim(a, noisy) < 0.99
    assert np.isnan(metrics.ms_ssim(a[:64, :64], noisy[:64, :64]))  # 5 scales need > 160 px


def test_block_colour_error_sees_colour_and_layout_not_texture():
    """metrics.block_de: 0 for the same picture; known CIELAB values (sRGB white, red); a block
    painted another colour or a picture moved by a block raises it; noise that keeps each block's
    mean colour barely does; under one block it is undefined."""
    from vqcodec import metrics

    white, red = np.array([[[255, 255, 255]]], np.uint8), np.array([[[255, 0, 0]]], np.uint8)
    assert metrics.lab(metrics.linear_rgb(white))[0, 0] == pytest.approx([100.0, 0.0, 0.0], abs=0.02)
    assert metrics.lab(metrics.linear_rgb(red))[0, 0] == pytest.approx([53.24, 80.09, 67.20], abs=0.05)
    rng = np.random.default_rng(0)
    a = np.repeat(np.repeat(rng.integers(30, 220, (6, 8, 3)), 16, 0), 16, 1).astype(np.uint8)  # 96x128, 48 blocks
    assert metrics.block_de(a, a) == 0.0
    painted = a.copy()
    painted[:16, :16] = [255, 0, 0]
    one = float(np.linalg.norm(metrics.lab(metrics.block_means(a)[0, 0]) - metrics.lab(metrics.linear_rgb(red)[0, 0])))
    assert metrics.block_de(a, painted) == pytest.approx(one / 48)
    moved = np.roll(a, 16, axis=1)
    flip = np.where(rng.random(a.shape) < 0.5, -1, 1) * 12  # +-12 levels around each pixel, block means kept
    noisy = np.clip(a.astype(int) + flip, 0, 255).astype(np.uint8)
    assert metrics.block_de(a, moved) > 10 * metrics.block_de(a, noisy)
    assert metrics.psnr(a, noisy) < 30  # the noise is no small change to a pixel metric
    assert np.isnan(metrics.block_de(a[:8], a[:8]))
