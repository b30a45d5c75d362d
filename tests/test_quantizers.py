"""The three quantizers behind one interface: shapes, determinism, round trips, K-means books,
and the codec/CLI round trip (encode, decode, corrupt, recover, info) of a tiny bundle of each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vqcodec import channel, codec, zoo
from vqcodec.cli import main
from vqcodec.nets.dual import DualCodebookVQ
from vqcodec.nets.looc import LoocVQ, depth_to_space, space_to_depth
from vqcodec.nets.quantizers import CosineVQ
from vqcodec.perceptual import weights_dir

from .conftest import QUANTIZER_CONFIGS, REPO, make_image

KINDS = {
    "vq": lambda: CosineVQ(32, 8),
    "looc": lambda: LoocVQ(32, 8, groups=4),
    "looc-x": lambda: LoocVQ(32, 8, groups=2, extrapolate=True),
    "dual": lambda: DualCodebookVQ(32, 8, width=16, heads=2),
}
PLANES = {"vq": 1, "looc": 4, "looc-x": 8, "dual": 2}


def _make(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return KINDS[kind]().eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (4, 4)])
def test_shapes_and_determinism(kind, hw):
    q = _make(kind)
    z = torch.randn(2, 8, *hw, generator=torch.Generator().manual_seed(1))
    idx = q.quantize(z)
    assert q.m == PLANES[kind]
    assert idx.shape == (2, q.m, *hw) and idx.dtype == torch.int64
    assert 0 <= int(idx.min()) and int(idx.max()) < q.codebook_size
    assert torch.equal(idx, q.quantize(z))  # same call, same answer
    assert torch.equal(idx, _make(kind).quantize(z))  # same seed, same quantizer
    zq = q.dequantize(idx)
    assert zq.shape == z.shape
    # the training pass agrees with the inference pair
    q.train()
    zq_t, loss, idx_t = q(z)
    q.eval()
    assert torch.equal(idx_t, idx) and torch.allclose(zq_t, zq, atol=1e-6) and loss.item() >= 0
    with pytest.raises(ValueError):
        q.dequantize(idx[:, :1] if q.m > 1 else idx.repeat(1, 2, 1, 1))


@pytest.mark.parametrize("kind", ["looc", "dual"])
def test_codes_quantize_to_themselves(kind):
    """dequantize then quantize returns the same indices (unnormalised latents, distinct codes)."""
    q = _make(kind)
    q.normalize = False
    idx = torch.randint(0, q.codebook_size, (1, q.m, 3, 4), generator=torch.Generator().manual_seed(2))
    assert torch.equal(q.quantize(q.dequantize(idx)), idx)


def test_looc_shares_one_low_dimensional_book():
    q = _make("looc")
    assert q.embedding.weight.shape == (32, 2)  # 8 channels / 4 groups
    idx = torch.zeros(1, 4, 1, 1, dtype=torch.long)
    idx[0, 2] = 5
    v = q.dequantize(idx)[0, :, 0, 0]
    book = q.embedding.weight
    assert torch.equal(v, torch.cat([book[0], book[0], book[5], book[0]]))


def test_looc_extrapolation_by_interpolation():
    q = _make("looc-x")
    z = torch.randn(1, 8, 3, 4, generator=torch.Generator().manual_seed(3))
    idx = q.quantize(z)
    up = F.interpolate(F.normalize(z, dim=1), scale_factor=2.0, mode="bilinear", align_corners=False)
    plain = LoocVQ(32, 8, groups=2, normalize=False)  # `up` is normalised before the upsampling
    plain.load_state_dict(q.state_dict())
    fine = plain.quantize(up)  # (1, 2, 6, 8): the 2x map quantized without extrapolation
    assert torch.equal(depth_to_space(idx), fine)
    assert torch.allclose(q.dequantize(idx), F.avg_pool2d(plain.dequantize(fine), 2))
    x = torch.arange(2 * 4 * 6).view(1, 2, 4, 6)
    assert torch.equal(depth_to_space(space_to_depth(x)), x)


def test_dual_caches_the_transformed_global_book():
    q = _make("dual")
    calls = []
    q.global_transformer.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn(1, 8, 4, 4)
    for _ in range(3):
        q.dequantize(q.quantize(z))
    assert len(calls) == 1  # computed once in eval mode
    g = q.global_codes()
    q.train()
    q(z)
    q(z)
    assert len(calls) == 3  # every training step updates the whole book
    q.eval()
    q.quantize(z)
    assert len(calls) == 4
    with torch.no_grad():
        q.global_out.bias.add_(1.0)
    q.load_state_dict(q.state_dict())  # loading weights drops the cache
    assert not torch.equal(q.global_codes(), g) and len(calls) == 5
    book = torch.stack([q.global_codes(), q.local_embedding.weight.detach()])
    idx = q.quantize(z)
    assert torch.equal(q.quantize(z, book), idx) and torch.allclose(q.dequantize(idx, book), q.dequantize(idx))


@pytest.mark.parametrize("kind", KINDS)
def test_dead_codes_restart(kind):
    q = _make(kind).train()
    q(torch.randn(2, 8, 4, 4))
    q.usage.zero_()
    assert q.restart_dead_codes() == q.usage.numel()


@pytest.mark.parametrize("quantizer", list(QUANTIZER_CONFIGS))
def test_bundle_round_trip(quantizer_bundles, quantizer, monkeypatch):
    monkeypatch.setenv("VQC_MODELS", str(quantizer_bundles[quantizer].parent))
    bundle = zoo.load_model(quantizer_bundles[quantizer])
    want = {"vq": ("vq", 1), "looc": ("looc", 2), "looc-x": ("looc", 8), "dual": ("dual", 2)}[quantizer]
    assert (bundle.manifest["quantizer"]["type"], bundle.m) == want
    k0 = bundle.model.config.n_embed
    planes = bundle.plane_tables(8)
    assert (planes is not None) == (quantizer in ("looc-x", "dual")) and (planes is None or len(planes) == bundle.m)
    assert bundle.codebook_sizes == [k for k in (8, 16, 32, 64) if k <= k0]
    img = make_image(40, 72, 1)
    for k in bundle.codebook_sizes[:2]:
        data = codec.encode(img, k, bundle)
        enc, _ = codec.unpack(data)  # the model is found from the file's id: no flag
        assert enc.indices.shape == (bundle.m, 3, 5)
        assert np.array_equal(enc.indices, codec.analyze(img, bundle, k).indices)
        out = codec.decode(data, bundle)
        assert out.shape == img.shape and np.array_equal(out, codec.decode(data, bundle))
        # packetized, half the packets lost: recovered, every plane filled from its own book
        lossy, _ = channel.corrupt(codec.pack(codec.analyze(img, bundle, k), bundle, packets=6), loss=0.5, seed=1)
        method = "masked" if bundle.m > 1 else "neighbour"  # masked falls back to neighbour for m > 1
        got, report = codec.decode_with_report(lossy, bundle, method=method)
        assert got.shape == img.shape and report.missing_positions > 0
        assert report.method.startswith("neighbour")
        assert bundle.m == 1 or "masked needs m = 1" in report.summary()


def test_context_coding_is_refused_for_m_above_1(quantizer_bundles):
    bundle = zoo.load_model(quantizer_bundles["dual"])
    from vqcodec.container import CodingMode
    from vqcodec.errors import VqcUsageError

    assert codec.best_mode(bundle, 8) == CodingMode.STATIC
    with pytest.raises(VqcUsageError, match="m = 2"):
        codec.encode(make_image(32, 32), 8, bundle, mode=CodingMode.CONTEXT)


@pytest.mark.parametrize("quantizer", ["looc", "dual"])
def test_cli_encode_decode_corrupt_recover_info(quantizer_bundles, quantizer, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VQC_MODELS", str(quantizer_bundles[quantizer].parent))
    photo = tmp_path / "p.png"
    Image.fromarray(make_image(40, 72, 2)).save(photo)

    def run(*args):
        code = main(list(map(str, args)))
        return code, capsys.readouterr()

    vqc, lossy = tmp_path / "p.vqc", tmp_path / "lossy.vqc"
    code, cap = run("encode", photo, "-o", vqc, "-k", 16, "--model", f"tiny-{quantizer}", "--packets", 5)
    assert code == 0, cap.err
    code, cap = run("info", vqc)
    assert code == 0 and "(2 x 3 x 5)" in cap.out
    code, cap = run("corrupt", vqc, "-o", lossy, "--loss", 0.4, "--seed", 3)
    assert code == 0, cap.err
    for method in ("none", "neighbour", "ar"):
        code, cap = run("decode", lossy, "-o", tmp_path / f"{method}.png", "--recover", method)
        assert code == 0, cap.err
        assert np.asarray(Image.open(tmp_path / f"{method}.png")).shape == (40, 72, 3)
    code, cap = run("encode", photo, "-o", vqc, "-k", 16, "--model", f"tiny-{quantizer}", "--entropy", "context")
    assert code != 0 and "m = 2" in cap.err and "Traceback" not in cap.err


@pytest.mark.skipif(not weights_dir().exists(), reason="LPIPS/DISTS weights not present")
def test_comparison_benchmark_runs(quantizer_bundles, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("quantizers_bench", REPO / "benchmarks" / "quantizers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = tmp_path / "imgs"
    data.mkdir()
    Image.fromarray(make_image(48, 64, 5)).save(data / "a.png")
    args = ["--data", data, "--out", tmp_path / "out", "--no-dists"]
    for q, ks in (("vq", "8"), ("looc-x", "8"), ("dual", "8")):
        args += ["--bundle", f"{q}={quantizer_bundles[q]}:{ks}"]
    bench.main(list(map(str, args)))
    out = capsys.readouterr().out
    assert "| looc-x (extrapolate off at test) | 8 | 2 |" in out and "| dual | 8 | 2 | 6.00 |" in out
    assert (tmp_path / "out" / "quantizers.csv").read_text().count("\n") == 5  # header + 4 variants


@pytest.mark.parametrize("quantizer", ["looc-x", "dual"])
def test_damaged_m_above_1_files_decode_or_fail_in_one_line(quantizer_bundles, quantizer):
    """Bit errors in plain and packetized m > 1 files: a recovered picture or a VqcError, nothing else."""
    from vqcodec.errors import VqcError

    bundle = zoo.load_model(quantizer_bundles[quantizer])
    img = make_image(40, 56, 4)
    enc = codec.analyze(img, bundle, 8)
    for packets in (0, 4):
        data = codec.pack(enc, bundle, packets=packets)
        rng = np.random.default_rng(packets)
        for _ in range(12):
            bad = bytearray(data)
            for pos in rng.integers(0, len(bad), 3):
                bad[pos] ^= 1 << int(rng.integers(0, 8))
            try:
                assert codec.decode(bytes(bad), bundle, method="neighbour").shape == img.shape
            except VqcError:
                pass


def test_per_plane_tables_round_trip():
    from vqcodec import entropy
    from vqcodec.errors import VqcFormatError

    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, 4, 50), rng.integers(8, 16, 50)])  # two planes, different statistics
    tables = [entropy.FrequencyTable.from_indices(p, 16) for p in idx]
    data = entropy.encode_planes(idx, tables)
    assert np.array_equal(entropy.decode_planes(data, tables, idx.size), idx.ravel())
    assert len(data) < len(entropy.encode_static(idx, entropy.FrequencyTable.from_indices(idx, 16)))
    with pytest.raises(VqcFormatError):
        entropy.decode_planes(data, tables, 101)
