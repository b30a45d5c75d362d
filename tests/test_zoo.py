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


def test_hostile_manifests_are_refused_before_allocation(tiny_bundle_dir, tmp_path):
    import tracemalloc

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle_dir, copy)
    m = json.loads((copy / zoo.MANIFEST).read_text())
    m["config"]["channels"] = [200000, 200000, 200000]  # ~10^12 parameters if built
    (copy / zoo.MANIFEST).write_text(json.dumps(m))
    tracemalloc.start()
    with pytest.raises(VqcModelError, match="parameters"):
        zoo.load_model(copy)
    assert tracemalloc.get_traced_memory()[1] < 50 << 20
    tracemalloc.stop()
    m["config"]["channels"] = "nonsense"
    (copy / zoo.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(VqcModelError, match="config"):
        zoo.load_model(copy)
    (copy / zoo.MANIFEST).write_text(" " * (zoo.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(VqcModelError, match="MiB"):
        zoo.load_model(copy)


def test_damaged_or_hostile_transformer_is_a_model_error(tiny_bundle_dir, tmp_path):
    import torch

    from vqcodec.nets.transformer import IndexTransformer, TransformerConfig

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle_dir, copy)
    torch.manual_seed(0)
    zoo.save_recovery(copy, IndexTransformer(TransformerConfig(sizes=(8, 16), dim=32, depth=1, heads=4)), {})
    m = json.loads((copy / zoo.MANIFEST).read_text())
    m["recovery"]["config"]["dim"] = 48  # weights no longer match the config
    (copy / zoo.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(VqcModelError, match="cannot load"):
        _ = zoo.load_model(copy).recovery_model
    m["recovery"]["config"]["dim"] = 1 << 16
    m["recovery"]["config"]["depth"] = 64
    (copy / zoo.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(VqcModelError, match="parameters"):
        _ = zoo.load_model(copy).recovery_model


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


def test_no_code_path_unpickles_arbitrary_objects():
    """Bundles are safetensors; every torch.load is weights_only=True; numpy never allows pickles."""
    import re

    for path in (REPO / "vqcodec").rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "allow_pickle=True" not in text, path
        assert not re.search(r"pickle\.loads?\(", text), path
        for call in re.finditer(r"torch\.load\(", text):
            assert "weights_only=True" in text[call.end() : call.end() + 200], (
                f"{path}: torch.load without weights_only"
            )


def test_written_bundle_files_follow_the_umask(tmp_path):
    """safetensors creates its files 0600; a bundle one user writes must be readable by others."""
    import os

    from .conftest import build_tiny_bundle

    old = os.umask(0o022)
    try:
        folder = build_tiny_bundle(tmp_path / "b")
    finally:
        os.umask(old)
    for f in (zoo.WEIGHTS, zoo.CODEBOOKS, zoo.MANIFEST):
        assert (folder / f).stat().st_mode & 0o777 == 0o644, f


def test_models_are_listed_with_lpips_at_plain_k64s_rate():
    """``vqc models`` quotes each bundle's Kodak LPIPS-Alex at about 6 bits a position: plain VQ's
    K=64, and K=8 for a bundle with m = 2 index planes (2 x log2 8 bits)."""
    plain = {"quantizer": {"m": 1}, "scores": {str(k): {"lpips": 0.5} for k in (8, 64, 1024)} | {"dataset": "x"}}
    assert zoo.reference_k(plain) == 64 and zoo.kodak_lpips(plain) == "0.500 (K=64)"
    two = {"quantizer": {"m": 2}, "scores": {str(k): {"lpips": 0.25} for k in (3, 6, 8, 11, 32)}}
    assert zoo.reference_k(two) == 8 and zoo.kodak_lpips(two) == "0.250 (K=8, m=2)"
    assert zoo.kodak_lpips({"quantizer": {"m": 1}, "scores": {}}) == "-"
    assert zoo.kodak_lpips({"quantizer": {"m": 1}, "scores": {"64": {"bpp": 0.1}}}) == "-"


def test_a_config_is_sized_on_the_meta_device_without_initialising_it(tmp_path):
    """``_checked_build`` counts parameters with the random initialisers switched off (no values
    are needed on the meta device, and their reference kernels would import ``torch._dynamo``, a
    second of every model load); an oversized config is refused, a real build is initialised."""
    import torch

    def embedding(rows: int) -> torch.nn.Module:
        return torch.nn.Embedding(rows, 4)

    with pytest.raises(VqcModelError, match="parameters, more than the limit"):
        zoo._checked_build(tmp_path, embedding, zoo.MAX_PARAMETERS)
    net = zoo._checked_build(tmp_path, embedding, 8)
    assert net.weight.device.type == "cpu" and float(net.weight.detach().std()) > 0


def test_loading_the_default_model_does_not_import_the_compiler():
    import subprocess
    import sys

    code = "import sys, vqcodec; vqcodec.load_model(); print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
