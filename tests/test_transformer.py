import numpy as np
import pytest
import torch

from vqcodec.nets.transformer import IndexTransformer, TransformerConfig, sincos_2d
from vqcodec.train import transformer as ttrain


def small():
    torch.manual_seed(0)
    return IndexTransformer(TransformerConfig(sizes=(8, 16), dim=32, depth=1, heads=4)).eval()


def test_shapes_per_k_and_any_map_size():
    net = small()
    x = torch.randint(0, 8, (2, 5, 7))
    m = torch.rand(2, 5, 7) < 0.5
    assert net(x, m, 8).shape == (2, 5, 7, 8)
    assert net(torch.randint(0, 16, (1, 3, 3)), torch.zeros(1, 3, 3, dtype=torch.bool), 16).shape == (1, 3, 3, 16)
    assert sincos_2d(4, 6, 32).shape == (24, 32)


@pytest.mark.parametrize("local", [0, 2])
def test_masked_values_do_not_leak(local):
    torch.manual_seed(0)
    net = IndexTransformer(TransformerConfig(sizes=(8, 16), dim=32, depth=1, heads=4, local=local)).eval()
    x = torch.randint(0, 8, (1, 4, 4))
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 1, 2] = True
    y = x.clone()
    y[0, 1, 2] = (x[0, 1, 2] + 3) % 8
    assert torch.allclose(net(x, m, 8), net(y, m, 8))


def test_causal_model_sees_only_the_past():
    torch.manual_seed(0)
    net = IndexTransformer(TransformerConfig(sizes=(8, 16), dim=32, depth=2, heads=4, causal=True, local=1)).eval()
    x = torch.randint(0, 8, (1, 4, 5))
    m = torch.zeros(1, 4, 5, dtype=torch.bool)
    t = 2 * 5 + 3  # raster position (2, 3)
    y = x.clone().flatten()
    y[t:] = (y[t:] + 1) % 8  # change the position itself and everything after it
    a, b = net(x, m, 8).flatten(1, 2), net(y.view(1, 4, 5), m, 8).flatten(1, 2)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5)  # predictions up to t unchanged
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])
    miss = torch.zeros(4, 5, dtype=torch.bool)
    miss[1, 1] = miss[3, 4] = True
    filled = net.predict_raster(x[0], miss, 8)
    lp = net.raster_log_probs(x[0], miss, 8, overlap=True)
    assert lp.shape == (4, 5, 8) and torch.allclose(lp, net.raster_log_probs(x[0], miss, 8), atol=1e-5)  # one tile
    assert torch.equal(filled[~miss], x[0][~miss]) and torch.equal(filled, net.predict_raster(x[0], miss, 8))


@pytest.mark.parametrize("shape", [(5, 7), (16, 16), (20, 7), (32, 48)])
def test_overlapped_tiles_give_distributions_of_any_map(shape):
    net = small()
    x = torch.randint(0, 16, shape, generator=torch.Generator().manual_seed(2))
    m = torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.3
    lp = net.overlapped_log_probs(x, m, 16)
    assert lp.shape == (*shape, 16) and torch.allclose(lp.exp().sum(-1), torch.ones(shape), atol=1e-5)
    if shape[0] <= 16 and shape[1] <= 16:  # one tile: the same as the disjoint tiling
        assert torch.allclose(lp, net.tiled(x, m, 16).log_softmax(-1), atol=1e-5)


def test_overlapped_tiles_see_across_a_tile_edge():
    """A hole at the edge of a disjoint tile sees nothing beyond it; with overlapping tiles it
    does, so changing the received index just across the edge changes its prediction."""
    net = small()
    x = torch.randint(0, 16, (16, 32), generator=torch.Generator().manual_seed(4))
    m = torch.zeros(16, 32, dtype=torch.bool)
    m[8, 15] = True  # last column of the first disjoint tile
    y = x.clone()
    y[8, 16] = (x[8, 16] + 5) % 16  # first column of the second
    assert torch.allclose(net.tiled(x, m, 16)[8, 15], net.tiled(y, m, 16)[8, 15])
    assert not torch.allclose(net.overlapped_log_probs(x, m, 16)[8, 15], net.overlapped_log_probs(y, m, 16)[8, 15])


def test_fill_only_touches_holes_and_is_deterministic():
    net = small()
    x = torch.randint(0, 16, (6, 9))
    miss = torch.rand(6, 9, generator=torch.Generator().manual_seed(1)) < 0.4
    for overlap in (True, False):
        a = net.fill(x, miss, 16, overlap=overlap)
        assert torch.equal(a[~miss], x[~miss]) and a.max() < 16
        assert torch.equal(a, net.fill(x, miss, 16, overlap=overlap))


def test_soft_fill_gives_mean_code_vectors_at_the_holes_only():
    import torch.nn.functional as F

    net = small()
    codes = F.normalize(torch.randn(16, 6, generator=torch.Generator().manual_seed(2)), dim=1)
    x = torch.randint(0, 16, (6, 9))
    miss = torch.rand(6, 9, generator=torch.Generator().manual_seed(1)) < 0.4
    idx, soft = net.fill_soft(x, miss, 16, codes)
    assert torch.equal(idx, net.fill(x, miss, 16, codes=codes))  # same snapped indices as fill
    assert soft.shape == (6, 9, 6)
    # the plain expected vector: inside the unit ball (shorter where the model hesitates)
    norms = soft[miss].norm(dim=1)
    assert (norms <= 1 + 1e-5).all() and (norms > 0).all() and not torch.allclose(norms, torch.ones_like(norms))
    assert (soft[~miss] == 0).all()
    # each hole's vector is closest to the code it was snapped to
    assert torch.equal((soft[miss] @ codes.t()).argmax(1), idx[miss])


def test_a_prior_enters_as_a_product_of_experts():
    import torch.nn.functional as F

    net = small()
    codes = F.normalize(torch.randn(16, 6, generator=torch.Generator().manual_seed(2)), dim=1)
    x = torch.randint(0, 16, (6, 9))
    miss = torch.rand(6, 9, generator=torch.Generator().manual_seed(1)) < 0.4
    certain = torch.full((6, 9, 16), -1e4)
    certain[..., 3] = 0.0  # a prior sure of index 3 everywhere outvotes an untrained model
    idx, soft = net.fill_soft(x, miss, 16, codes, prior=certain)
    assert (idx[miss] == 3).all() and torch.equal(idx[~miss], x[~miss])
    assert torch.allclose(soft[miss], codes[3].expand(int(miss.sum()), 6), atol=1e-4)
    assert not torch.equal(idx, net.fill(x, miss, 16, codes=codes))


def test_fill_masks_look_like_packet_loss():
    import random

    rng = random.Random(3)
    masks = [ttrain.fill_mask(16, 16, rng) for _ in range(300)]
    ratios = np.array([float(m.float().mean()) for m in masks])
    # never an empty map, never one with every packet lost (the decoder refuses that file); a burst
    # may leave a near-empty one, as it does on a real link, but rarely
    assert (ratios > 0).all() and ratios.max() < 1 and (ratios > 0.9).mean() < 0.02
    assert 0.15 < ratios.mean() < 0.45  # the loss rates a decoder meets (0.05 ... 0.6)


def test_training_learns_a_constant_map(tmp_path):
    import random

    maps = {8: [np.full((12, 12), 5, np.int16)], 16: [np.full((12, 12), 9, np.int16)]}
    net = IndexTransformer(TransformerConfig(sizes=(8, 16), dim=32, depth=1, heads=4))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(40):
        k = rng.choice([8, 16])
        x, m = ttrain.batch(maps[k], 8, 4, rng)
        loss = torch.nn.functional.cross_entropy(net(x, m, k)[m], x[m])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    filled = net.fill(torch.full((6, 6), 5), torch.ones(6, 6, dtype=torch.bool), 8)
    assert (filled == 5).all()


def test_anneal_decays_the_rate_smoothly_to_a_floor():
    f = [ttrain.anneal_factor(d / 10) for d in range(11)]
    assert f[0] == pytest.approx(1.0) and f[-1] == pytest.approx(0.05) and f[5] == pytest.approx(0.525)
    assert all(a > b for a, b in zip(f, f[1:], strict=False))


def test_train_export_and_masked_recovery(tiny_bundle_dir, tmp_path):
    import shutil

    import pytest
    from PIL import Image

    from vqcodec import channel, codec, zoo
    from vqcodec.errors import VqcUsageError

    from .conftest import make_image

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(make_image(64, 96, seed=i)).save(photos / f"p{i}.png")
    before = zoo.load_model(bundle_dir)
    ttrain.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "run"), "--data", str(photos), "--steps", "3",
                 "--batch", "2", "--crop", "4", "--dim", "32", "--depth", "1", "--export"])  # fmt: skip
    b = zoo.load_model(bundle_dir)
    assert b.model_id == before.model_id and b.recovery_model is not None
    assert b.manifest["recovery"]["steps"] == 3
    data = codec.pack(codec.analyze(make_image(96, 128), b, 16), b, packets=8)
    lossy, _ = channel.corrupt(data, loss=0.4, seed=1)
    out, report = codec.decode_with_report(lossy, b)
    assert out.shape == (96, 128, 3) and report.method == "masked"
    assert codec.decode_with_report(lossy, b, method="neighbour")[1].method == "neighbour"
    enc, _, _ = codec.unpack_packets(lossy, b, method="masked")  # soft: expected vectors at the holes
    hard, _, _ = codec.unpack_packets(lossy, b, method="masked-index")
    mask, vectors = enc.hole_latents
    assert hard.hole_latents is None and np.array_equal(enc.indices, hard.indices)
    assert mask.sum() == report.missing_positions > 0 and vectors.shape == (mask.sum(), b.model.config.embed_dim)
    out_hard = codec.synthesize(hard, b)
    assert (
        out_hard.shape == out.shape
        and not np.array_equal(out_hard, out)
        and np.array_equal(out, codec.synthesize(enc, b))
    )
    with pytest.raises(VqcUsageError, match="no ar recovery transformer"):
        codec.decode_with_report(lossy, b, method="ar")
    ttrain.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "run-ar"), "--data", str(photos), "--steps", "3",
                 "--batch", "2", "--crop", "4", "--dim", "32", "--depth", "1", "--causal", "--export"])  # fmt: skip
    b = zoo.load_model(bundle_dir)
    assert b.ar_model is not None and b.ar_model.config.causal and b.manifest["recovery_ar"]["steps"] == 3
    # a new machine continues the shipped transformer: same architecture, its steps counted on
    ttrain.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "run-ar2"), "--data", str(photos), "--steps", "5",
                 "--batch", "2", "--crop", "4", "--causal", "--from-bundle", "--export"])  # fmt: skip
    b2 = zoo.load_model(bundle_dir)
    assert b2.manifest["recovery_ar"]["steps"] == 5 and b2.ar_model.config == b.ar_model.config
    assert any(
        not torch.equal(a, c)
        for a, c in zip(b2.ar_model.state_dict().values(), b.ar_model.state_dict().values(), strict=True)
    )
    b = b2
    out, report = codec.decode_with_report(lossy, b, method="ar")
    assert out.shape == (96, 128, 3) and report.method == "ar"
    enc, _, _ = codec.unpack_packets(lossy, b, method="ar")  # soft too: expected vectors at the holes
    assert enc.hole_latents[0].sum() == report.missing_positions
    assert np.array_equal(
        enc.indices[0],
        b.ar_model.predict_raster(
            torch.from_numpy(enc.indices[0]),
            torch.from_numpy(enc.hole_latents[0]),
            16,
            codes=b.model.quantize.codes(b.codebook(16)),
        ).numpy(),
    )
    assert codec.decode_with_report(lossy, b)[1].method == "masked"  # auto prefers masked
    # a recovery-only model (--task fill) starts from the shared masked one; masked recovery then
    # uses it, while the context coder keeps the shared model (context-coded files still decode)
    ctx = codec.pack(codec.analyze(make_image(96, 128), b, 16), b, mode=codec.CodingMode.CONTEXT)
    with pytest.raises(SystemExit):
        ttrain.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "bad"), "--task", "fill", "--causal"])
    ttrain.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "run-fill"), "--data", str(photos),
                 "--steps", "4", "--batch", "2", "--crop", "4", "--task", "fill", "--from-bundle", "--anneal",
                 "--export"])  # fmt: skip
    bf = zoo.load_model(bundle_dir)
    assert bf.manifest["recovery_fill"]["steps"] == 4 and "context_levels" not in bf.manifest["recovery_fill"]
    assert bf.transformer("fill").config == bf.recovery_model.config
    # the integer-exact copy of the fill model (written by --export): recovered maps portable
    assert bf.has_exact("fill") and codec._recovery_choice(bf, "masked", True)[1] is bf.exact_transformer("fill")
    assert codec._recovery_choice(bf, "ar", True)[1] is bf.ar_model
    assert codec.pack(codec.analyze(make_image(96, 128), bf, 16), bf, mode=codec.CodingMode.CONTEXT) == ctx
    enc_fill, _, _ = codec.unpack_packets(lossy, bf, method="masked")
    assert enc_fill.hole_latents[0].sum() == report.missing_positions
    intact = codec.pack(codec.analyze(make_image(96, 128), b, 16), b, packets=8)
    for method in (
        "ar",
        "masked",
        "masked-index",
        "neighbour",
        "none",
    ):  # nothing lost: every method gives the same image
        out, report = codec.decode_with_report(intact, b, method=method)
        assert report.missing_positions == 0 and np.array_equal(out, codec.decode(intact, b))
    # the weights alone travel (model.pt, e.g. back from a GPU machine); --init starts from them with
    # a fresh optimizer, its steps counted on; crops and masks drawn by a worker process
    fill_weights = tmp_path / "run-fill" / "model.pt"
    assert torch.load(fill_weights, weights_only=True)["step"] == 4
    ttrain.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "run-fill2"), "--data", str(photos),
                 "--steps", "6", "--batch", "2", "--crop", "4", "--task", "fill", "--init", str(fill_weights),
                 "--workers", "1", "--export"])  # fmt: skip
    b3 = zoo.load_model(bundle_dir)
    assert b3.manifest["recovery_fill"]["steps"] == 6 and b3.transformer("fill").config == bf.recovery_model.config


def test_context_coding_round_trip_threads_and_checksum(tiny_bundle_dir, tmp_path):
    import shutil

    import pytest

    from vqcodec import codec, context, zoo
    from vqcodec.container import CodingMode
    from vqcodec.errors import VqcFormatError, VqcUsageError

    from .conftest import make_image

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle_dir)
    plain = zoo.load_model(bundle_dir)
    assert codec.best_mode(plain, 16) == CodingMode.STATIC
    with pytest.raises(VqcUsageError, match="context model"):
        codec.encode(make_image(32, 32), 16, plain, CodingMode.CONTEXT)
    torch.manual_seed(0)
    net = IndexTransformer(TransformerConfig(sizes=(8, 16, 32, 64), dim=32, depth=1, heads=4)).eval()
    zoo.save_recovery(bundle_dir, net, {"steps": 0})
    b = zoo.load_model(bundle_dir)
    img = make_image(80, 112, seed=3)
    enc = codec.analyze(img, b, 32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = codec.encode(img, 32, b)
        torch.set_num_threads(2)
        c = codec.encode(img, 32, b)
        back, _ = codec.unpack(a, b)
    finally:
        torch.set_num_threads(old)
    assert a == c and codec.info(a).header.mode == CodingMode.EXACT  # the default: integer-exact
    assert np.array_equal(back.indices, enc.indices)
    payload = context.encode_context(enc.indices, b.recovery_model, 32, tag=0x1234)
    assert np.array_equal(context.decode_context(payload, b.recovery_model, 32, 1, *enc.indices.shape[1:], tag=0x1234),
                          enc.indices)  # fmt: skip
    bad = payload[:4] + bytes([payload[4] ^ 0x40]) + payload[5:]
    with pytest.raises(VqcFormatError):
        context.decode_context(bad, b.recovery_model, 32, 1, *enc.indices.shape[1:], tag=0x1234)
    with pytest.raises(VqcFormatError, match="another context model"):
        context.decode_context(payload, b.recovery_model, 32, 1, *enc.indices.shape[1:], tag=0x4321)
    # a retrained context model under the same model id: the file is refused, not misdecoded
    torch.manual_seed(1)
    zoo.save_recovery(bundle_dir, IndexTransformer(net.config).eval(), {"steps": 1})
    with pytest.raises(VqcFormatError, match="another context model"):
        codec.unpack(a, zoo.load_model(bundle_dir))
    with pytest.raises(VqcUsageError, match="packets"):
        codec.pack(enc, b, CodingMode.CONTEXT, packets=4)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_context_lattice_orders_round_trip(levels):
    from vqcodec import context

    g = context.groups(11, 13, levels)
    assert g.min() == 0 and g.max() == 3 * levels and (g >= 0).all()
    assert (g == 0).sum() == len(range(0, 11, 2**levels)) * len(range(0, 13, 2**levels))
    torch.manual_seed(0)
    net = IndexTransformer(TransformerConfig(sizes=(8, 16), dim=32, depth=1, heads=4, local=1)).eval()
    idx = np.random.default_rng(levels).integers(0, 16, (1, 11, 13))
    payload = context.encode_context(idx, net, 16, tag=7, levels=levels)
    assert np.array_equal(context.decode_context(payload, net, 16, 1, 11, 13, tag=7, levels=levels), idx)
