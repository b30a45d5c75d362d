import json
import shutil

import pytest

import vqcodec
from vqcodec import zoo
from vqcodec.errors import VqcModelError

from .conftest import REPO, make_image


def test_sha256_mismatch_is_detected(tiny_bundle_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle_dir, copy)
    data = bytearray((copy / zoo.CODEBOOKS).read_bytes())
    data[-1] ^= 1
    (copy / zoo.CODEBOOKS).write_bytes(bytes(data))
    with pytest.raises(VqcModelError, match="sha256 mismatch"):
        zoo.load_model(copy)


def test_missing_or_broken_manifest(tiny_bundle_dir, tmp_path):
    with pytest.raises(VqcModelError, match="not found"):
        zoo.load_model(tmp_path / "nothing")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle_dir, copy)
    m = json.loads((copy / zoo.MANIFEST).read_text())
    m["format"] = 99
    (copy / zoo.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(VqcModelError, match="format"):
        zoo.load_model(copy)
    (copy / zoo.MANIFEST).write_text("{not json")
    with pytest.raises(VqcModelError, match="unreadable"):
        zoo.load_model(copy)


def test_manifest_records_config_and_hashes(tiny):
    m = tiny.manifest
    assert set(m["files"]) == {zoo.WEIGHTS, zoo.CODEBOOKS}
    assert len(m["model_id"]) == 8 and m["codebook_sizes"] == [8, 16, 32, 64]
    assert tiny.codebooks[64].shape == (64, 8)
    assert all((t.counts >= 1).all() for t in tiny.tables.values())


shipped = pytest.mark.skipif(
    not (REPO / "models" / zoo.DEFAULT_MODEL / zoo.MANIFEST).exists(), reason="no shipped bundle"
)


@shipped
def test_shipped_default_bundle_round_trip():
    bundle = vqcodec.load_model()
    assert bundle.codebook_sizes == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert bundle.manifest["training"]["steps"] > 0
    img = make_image(64, 96)
    for k in (8, 1024):
        out = vqcodec.decode_array(vqcodec.encode(img, k))
        assert out.shape == img.shape
