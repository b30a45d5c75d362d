"""The shipped bundles of the seed papers' other two quantizers, LooC (``vqc-looc``) and the dual
codebook (``vqc-dual``): each round-trips a small image through the CLI and the Python API, and
``vqc models`` lists it with its measured Kodak LPIPS-Alex."""

import numpy as np
import pytest
from PIL import Image

import vqcodec
from vqcodec import zoo
from vqcodec.cli import main

from .conftest import REPO, make_image

SEED_MODELS = {"vqc-looc": "looc", "vqc-dual": "dual"}
"""bundle name -> the quantizer its manifest must declare"""

pytestmark = pytest.mark.skipif(
    not all((REPO / "models" / n / zoo.MANIFEST).exists() for n in SEED_MODELS), reason="seed bundles not shipped"
)


@pytest.fixture(autouse=True)
def _repository_models(monkeypatch):
    """Find the bundles in the repository's models/, whatever $VQC_MODELS the caller set."""
    monkeypatch.setenv("VQC_MODELS", str(REPO / "models"))


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(map(str, args)))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("name", sorted(SEED_MODELS))
def test_cli_round_trip(name, tmp_path, capsys):
    photo, vqc, back = tmp_path / "photo.png", tmp_path / "photo.vqc", tmp_path / "back.png"
    Image.fromarray(make_image(64, 96)).save(photo)
    bundle = zoo.load_model(name)
    k = bundle.codebook_sizes[len(bundle.codebook_sizes) // 2]
    code, _, err = run(capsys, "encode", photo, "-o", vqc, "--model", name, "-k", k)
    assert code == 0, err
    assert f"model {name}" in err and f"K={k}" in err
    code, out, _ = run(capsys, "info", vqc)
    assert code == 0 and "static" in out  # m = 2 index maps: per-plane static tables, no context model
    assert "2 x 4 x 6" in out  # two index planes of 64/16 x 96/16 positions
    code, _, err = run(capsys, "decode", vqc, "-o", back)  # the model is found by the id in the header
    assert code == 0, err
    assert np.asarray(Image.open(back)).shape == (64, 96, 3)


@pytest.mark.parametrize("name", sorted(SEED_MODELS))
def test_python_api_round_trip(name):
    bundle = vqcodec.load_model(name)
    assert bundle.manifest["quantizer"]["type"] == SEED_MODELS[name] and bundle.m == 2
    img = make_image(64, 96, seed=1)
    sizes = []
    for k in (bundle.codebook_sizes[0], bundle.codebook_sizes[-1]):
        data = vqcodec.encode(img, k, name)
        out = np.asarray(vqcodec.decode(data))
        assert out.shape == img.shape
        # a reconstruction, not noise: much closer to the input than to its colour-inverted copy
        err = np.abs(out.astype(int) - img).mean()
        assert err < np.abs(out.astype(int) - (255 - img)).mean()
        sizes.append(len(data))
    assert sizes[0] <= sizes[1]  # more codes, at least as many bytes


def test_models_lists_them_with_their_kodak_lpips(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    flat = " ".join(out.split())
    for name in SEED_MODELS:
        assert name in flat
        man = zoo.load_model(name).manifest
        k = zoo.reference_k(man)
        assert k == 8  # m = 2 planes of K = 8: 6 bits a position, as plain VQ's K=64
        assert man["scores"][str(k)]["images"] == 24  # every Kodak photo
        assert f"{man['scores'][str(k)]['lpips']:.3f}" in flat

