"""Encoder effort (``--effort``): ordinary files, never bigger, a better search objective, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vqcodec
from vqcodec import codec, effort, loss_weights, options
from vqcodec.errors import VqcUsageError
from vqcodec.zoo import load_model

from .conftest import make_image
from .test_cli import run


@pytest.fixture(scope="module")
def gan2():
    return load_model("vqc-gan2")


def _objective(bundle, pixels: np.ndarray, enc: codec.Encoded) -> float:
    """The search's distortion (LPIPS-VGG + L1 + block colour) of a map's decoded picture."""
    s = effort.settings(2)
    x = codec._to_tensor(codec.pad_to_multiple(pixels, bundle.stride))
    h, w = pixels.shape[:2]
    z = bundle.model.quantize.dequantize(torch.from_numpy(enc.indices)[None], bundle.codebook(enc.codebook_size))
    with torch.no_grad():
        out = bundle.model.decode_latent(z.contiguous(memory_format=bundle.model.memory_format)).float()
        return float(effort.Distortion(x[:, :, :h, :w], s.l1, s.colour)(out[:, :, :h, :w]))


def test_levels_cover_one_to_max():
    assert sorted(effort.LEVELS) == list(range(1, options.MAX_EFFORT + 1))
    assert effort.LEVELS[1].steps == 0
    steps = [effort.LEVELS[e].steps for e in sorted(effort.LEVELS)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # more effort, more search


def test_effort_one_is_todays_encoder(tiny):
    img = make_image(48, 80, seed=2)
    assert vqcodec.encode(img, 16, tiny, effort=1) == vqcodec.encode(img, 16, tiny)


@pytest.mark.parametrize("bad", [0, 6, -1, "3", 2.0, True, None])
def test_bad_effort_is_a_usage_error(tiny, bad):
    with pytest.raises(VqcUsageError, match="effort must be a whole number from 1 to 5"):
        vqcodec.encode(make_image(32, 32), 16, tiny, effort=bad)


def test_searched_file_is_ordinary_smaller_and_better(gan2):
    """Context-coded (int8) at K=64: never more bytes than effort 1, decodes with the plain
    decoder, and its picture scores at least as well on the search's own objective."""
    img = make_image(80, 112, seed=5)
    d1, e1 = codec.compress(img, gan2, 64)
    d3, e3 = codec.compress(img, gan2, 64, effort=3)
    assert len(d3) <= len(d1)
    assert vqcodec.info(d3).header.mode == vqcodec.info(d1).header.mode
    assert vqcodec.decode_array(d3).shape == img.shape
    np.testing.assert_array_equal(codec.unpack(d3)[0].indices, e3.indices)  # the file holds the searched map
    assert _objective(gan2, img, e3) <= _objective(gan2, img, e1) + 1e-4
    assert (e3.indices != e1.indices).any()  # it searched: some position chose another code
    assert codec.compress(img, gan2, 64, effort=3)[0] == d3  # deterministic


def test_budget_packets_and_static_coding(gan2):
    img = make_image(64, 96, seed=7)
    budget = len(codec.compress(img, gan2, 64)[0]) + 6
    data, _ = codec.compress(img, gan2, max_bytes=budget, effort=2)
    assert len(data) <= budget
    opts = codec.PackOptions(packets=4, parity=1)
    d1, _ = codec.compress(img, gan2, 16, options=opts)
    d2, _ = codec.compress(img, gan2, 16, options=opts, effort=2)
    assert len(d2) <= len(d1) and vqcodec.info(d2).packets.parity == 1
    assert vqcodec.decode_array(d2).shape == img.shape


@pytest.mark.parametrize("hw", [(1, 1), (8, 8), (20, 13), (40, 17)])
def test_tiny_images_keep_the_nearest_codes(tiny, hw):
    """Too small for the loss network to measure: no search, no error, the effort-1 bytes."""
    img = make_image(*hw, seed=1)
    assert vqcodec.encode(img, 16, tiny, effort=3) == vqcodec.encode(img, 16, tiny)


def test_tiles_partition_the_map():
    for h, w in [(1, 1), (5, 7), (48, 48), (49, 97), (100, 3)]:
        seen = np.zeros((h, w), int)
        for rows, cols, wr, wc in effort._tiles(h, w):
            seen[rows, cols] += 1
            assert wr.start <= rows.start and wr.stop >= rows.stop and wc.start <= cols.start and wc.stop >= cols.stop
        assert (seen == 1).all()


def test_tiled_search_fits_and_decodes(gan2, monkeypatch):
    """Big photos search tile by tile (here forced on a small one)."""
    monkeypatch.setattr(effort, "TILE", 3)
    img = make_image(96, 128, seed=9)
    d1, _ = codec.compress(img, gan2, 64)
    d2, e2 = codec.compress(img, gan2, 64, effort=2)
    assert len(d2) <= len(d1)
    assert vqcodec.decode_array(d2).shape == img.shape


def test_fit_budget_reverts_the_costliest_changes_first():
    q0 = np.zeros((2, 3), np.int64)
    q = np.array([[1, 1, 0], [2, 0, 3]])
    bits = torch.tensor([0.0, 1.0, 5.0, 9.0])  # code c costs this much everywhere

    def rate(m: np.ndarray) -> torch.Tensor:
        return bits[None].expand(m.size, -1)

    def size_of(m: np.ndarray) -> int:
        return int(np.ceil(bits[torch.from_numpy(m.ravel())].sum().item() / 8))

    out, reverted = effort.fit_budget(q0, q, rate, size_of, max_bytes=1)  # 16 bits -> at most 8
    assert size_of(out) <= 1 and reverted >= 1
    assert out[1, 2] == 0  # the 9-bit code went back first
    assert out[0, 0] == 1 and out[0, 1] == 1  # cheap changes kept
    out, _ = effort.fit_budget(q0, q, rate, lambda m: 99 if (m != q0).any() else 0, max_bytes=0)
    np.testing.assert_array_equal(out, q0)  # nothing else fits: the nearest-code map


def test_multi_plane_models_refuse_effort(quantizer_bundles):
    looc = load_model(quantizer_bundles["looc"])
    with pytest.raises(VqcUsageError, match="single-plane"):
        vqcodec.encode(make_image(32, 32), looc.codebook_sizes[0], looc, effort=2)


def test_missing_loss_network_is_one_line(tmp_path, monkeypatch):
    import builtins

    monkeypatch.setenv("VQC_WEIGHTS", str(tmp_path))
    real = builtins.__import__

    def no_torchvision(name, *a, **kw):
        if name == "torchvision":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    loss_weights.lpips_vgg.cache_clear()
    try:
        with pytest.raises(VqcUsageError, match=r"pip install 'vqcodec\[effort\]'"):
            loss_weights.lpips_vgg()
    finally:
        loss_weights.lpips_vgg.cache_clear()


def test_cli_effort(models_env, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "p.png"
    Image.fromarray(make_image(48, 64, seed=4)).save(src)
    out = tmp_path / "p.vqc"
    code, _, err = run(capsys, "encode", src, "-o", out, "-k", 16, "--model", models_env, "--effort", 2)
    assert code == 0, err
    assert "effort 2" in err and out.stat().st_size > 0
    bad = tmp_path / "bad.vqc"
    code, _, err = run(capsys, "encode", src, "-o", bad, "-k", 16, "--model", models_env, "--effort", 9)
    assert code != 0 and "effort must be a whole number" in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()


def test_remembered_probabilities_code_the_same_bytes(gan2, monkeypatch):
    """A map priced and then coded inside ``context.remembering`` runs the context model once, and
    its bytes are those of a plain encode."""
    from vqcodec import context

    img = make_image(64, 96, seed=11)
    enc = codec.analyze(img, gan2, 64)
    net = codec._int8_net(gan2, 64)
    plain = context.encode_context(enc.indices, net, 64, 7, gan2.context_levels)
    calls = []
    inner = context._group_probs
    monkeypatch.setattr(context, "_group_probs", lambda *a: calls.append(1) or inner(*a))
    rate = effort.context_rate(net, 64, gan2.context_levels)
    with context.remembering():
        table = rate(enc.indices[0])
        first = len(calls)
        assert context.encode_context(enc.indices, net, 64, 7, gan2.context_levels) == plain
        assert torch.equal(rate(enc.indices[0]), table)
        assert len(calls) == first  # coded and priced again from what was kept
    assert context.encode_context(enc.indices, net, 64, 7, gan2.context_levels) == plain
    assert len(calls) > first  # outside the scope nothing is kept


def test_unjudged_last_step_saves_a_decoder_pass(gan2, monkeypatch):
    """A level whose last map is taken unmeasured decodes once per step, not once more."""
    img = make_image(64, 96, seed=12)
    calls = []
    inner = type(gan2.model).decode_latent
    monkeypatch.setattr(type(gan2.model), "decode_latent", lambda self, z: calls.append(1) or inner(self, z))
    d1, _ = codec.compress(img, gan2, 64)
    for judge, passes in [(True, 2), (False, 1)]:
        monkeypatch.setitem(effort.LEVELS, 2, effort.Settings(steps=1, lr=0.03, judge_last=judge))
        calls.clear()
        d2, e2 = codec.compress(img, gan2, 64, effort=2)
        assert len(calls) == passes
        assert len(d2) <= len(d1)
        np.testing.assert_array_equal(codec.unpack(d2)[0].indices, e2.indices)
