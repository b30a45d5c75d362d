"""Shared fixtures: a tiny randomly initialised bundle (seeded) and small test images.

Nothing here touches the network; the tiny bundle is built in a temporary folder so the tests do
not depend on the shipped model, except those marked to use it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vqcodec.nets.autoencoder import ARCHS, AutoencoderConfig, build_autoencoder, register_arch
from vqcodec.train.codebooks import build_books, collect_latents, collect_maps, collect_parts, plane_tables
from vqcodec.zoo import load_model, save_bundle

TINY = AutoencoderConfig(
    channels=(32, 64, 64),
    enc_res_blocks=(1, 1, 1),
    dec_res_blocks=(1, 1, 1),
    stem=4,
    z_channels=64,
    embed_dim=8,
    n_embed=64,
    cosine=True,
    mid_attn=True,
)
if "test-tiny" not in ARCHS:
    register_arch("test-tiny", TINY)
TINY_TAEF2 = AutoencoderConfig(
    channels=(32, 32),
    enc_res_blocks=(1, 1),
    dec_res_blocks=(1, 1),
    stem=8,
    z_channels=32,
    embed_dim=8,
    n_embed=64,
    cosine=True,
    mid_attn=False,
    backbone="taef2",
)
if "test-tiny-taef2" not in ARCHS:
    register_arch("test-tiny-taef2", TINY_TAEF2)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory):
    """The networks converted for OpenVINO go to a folder of this test session, not the user's
    cache (subprocesses of the tests inherit it)."""
    import os

    folder = tmp_path_factory.mktemp("vqc-cache")
    old = os.environ.get("VQC_CACHE")
    os.environ["VQC_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("VQC_CACHE", None)
    else:
        os.environ["VQC_CACHE"] = old


def make_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful test picture with some texture (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack(
        [
            128 + 100 * np.sin(xx / 7 + seed),
            128 + 100 * np.cos(yy / 11),
            128 + 60 * np.sin((xx + yy) / 5),
        ],
        axis=-1,
    )
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


QUANTIZER_CONFIGS = {
    "vq": {},
    "looc": {"quantizer": "looc", "m": 2, "n_embed": 32},
    "looc-x": {"quantizer": "looc", "m": 2, "n_embed": 32, "extrapolate": True},
    "dual": {"quantizer": "dual", "m": 2, "n_embed": 32},
}
"""The tiny config with each quantizer (looc-x: LooC with extrapolation-by-interpolation)."""


def build_tiny_bundle(folder: Path, seed: int = 0, name: str = "tiny", quantizer: str = "vq") -> Path:
    torch.manual_seed(seed)
    model = build_autoencoder(dataclasses.replace(TINY, **QUANTIZER_CONFIGS[quantizer])).eval()
    images = [make_image(64, 96, s) for s in range(4)]
    if quantizer == "vq":  # the original route, kept so the tiny VQ bundle's bytes stay as they were
        latents = collect_latents(model, images)
    else:
        latents = collect_parts(model, images)
    books, tables, stats = build_books(model, latents, sizes=(8, 16, 32, 64))
    # per-plane tables for two of the m > 1 bundles; tiny-looc keeps the pooled table (both paths tested)
    planes = plane_tables(model, collect_maps(model, images), books) if quantizer in ("looc-x", "dual") else None
    save_bundle(folder, name, model, "test-tiny", books, tables, {"steps": 0, "seed": seed}, plane_tables=planes)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny(tiny_bundle_dir):
    return load_model(tiny_bundle_dir)


@pytest.fixture(scope="session")
def quantizer_bundles(tmp_path_factory) -> dict[str, Path]:
    """One tiny bundle per quantizer (vq, looc, looc-x, dual), all in one models folder."""
    root = tmp_path_factory.mktemp("qmodels")
    return {q: build_tiny_bundle(root / f"tiny-{q}", seed=3, name=f"tiny-{q}", quantizer=q) for q in QUANTIZER_CONFIGS}


@pytest.fixture()
def models_env(tiny_bundle_dir, monkeypatch):
    """Make the tiny bundle discoverable by id (for decoding without --model)."""
    monkeypatch.setenv("VQC_MODELS", str(tiny_bundle_dir.parent))
    return tiny_bundle_dir
