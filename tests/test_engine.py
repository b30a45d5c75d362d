"""The pixel networks on OpenVINO (``nets/openvino_engine``): the same maps and pictures as
PyTorch within the precision, converted once per machine, and PyTorch wherever OpenVINO cannot run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqcodec import codec, zoo
from vqcodec.nets import openvino_engine as engine

from .conftest import make_image

pytest.importorskip("openvino")


def fresh_gan2():
    """A model object of its own (``load_model`` keeps bundles): nothing compiled for it yet."""
    zoo._load_cached.cache_clear()
    return zoo.load_model("vqc-gan2")


@pytest.fixture()
def gan2():
    return fresh_gan2()


def _both(bundle, img: np.ndarray, k: int, monkeypatch) -> tuple:
    """(map, picture of that map) on the default engine and on PyTorch eager."""
    enc = codec.analyze(img, bundle, k)
    pic = codec.synthesize(enc, bundle)
    monkeypatch.setenv("VQC_ENGINE", "torch")
    enc_t = codec.analyze(img, bundle, k)
    pic_t = codec.synthesize(enc, bundle)
    monkeypatch.delenv("VQC_ENGINE")
    return enc.indices, pic, enc_t.indices, pic_t


def test_openvino_draws_what_pytorch_draws(gan2, monkeypatch, engine_cache):
    img = make_image(128, 192, seed=3)
    assert engine.prepare(gan2.model), engine.FAILURES
    idx, pic, idx_t, pic_t = _both(gan2, img, 64, monkeypatch)
    assert (idx == idx_t).mean() >= 0.95  # the precision moves a few near-ties, as bf16 against fp32 does
    mse = ((pic.astype(np.float64) - pic_t) ** 2).mean()
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 38
    folder = engine_cache / "openvino" / engine.digest(gan2.model)
    assert {"encoder.xml", "decoder.xml"} <= {p.name for p in folder.glob("*.xml")}


def test_converted_networks_are_read_back_not_converted_again(gan2, monkeypatch):
    assert engine.prepare(gan2.model)  # converted (or already there)
    again = fresh_gan2()
    assert again.model is not gan2.model

    def no(*_):
        raise AssertionError("converted twice")

    monkeypatch.setattr(engine, "_convert", no)
    monkeypatch.setattr(engine, "_COMPILED", {})  # a new process: nothing compiled, the IR on disk
    assert engine.prepare(again.model)
    img = make_image(64, 96, seed=4)
    np.testing.assert_array_equal(codec.analyze(img, again, 64).indices, codec.analyze(img, gan2, 64).indices)


def test_switched_off_or_failing_engine_leaves_pytorch(gan2, monkeypatch, tiny):
    monkeypatch.setenv("VQC_ENGINE", "torch")
    assert engine.runner(gan2.model, "encoder") is None
    monkeypatch.delenv("VQC_ENGINE")
    for limit in engine.LIMITS:
        monkeypatch.setenv(limit, "SSE41")
        assert engine.runner(gan2.model, "encoder") is None
        monkeypatch.delenv(limit)
    assert tiny.model.config.backbone == "vqgan" and engine.runner(tiny.model, "decoder") is None
    monkeypatch.setattr(engine, "_ir", lambda *_: (_ for _ in ()).throw(RuntimeError("no")))
    monkeypatch.setattr(engine, "_COMPILED", {})
    fresh = fresh_gan2()
    assert engine.runner(fresh.model, "decoder") is None  # PyTorch draws it
    img = make_image(48, 64, seed=1)
    assert codec.decode(codec.encode(img, 64, fresh), fresh).shape == img.shape


def test_unwritable_cache_converts_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("VQC_CACHE", str(blocker / "sub"))  # a folder cannot be made under a file
    monkeypatch.setattr(engine, "_COMPILED", {})
    fresh = fresh_gan2()
    run = engine.runner(fresh.model, "decoder")
    assert run is not None
    z = torch.zeros(1, fresh.model.config.embed_dim, 2, 3)
    assert tuple(run(z).shape) == (1, 3, 32, 48)


def test_first_use_inside_the_codecs_autocast_converts(gan2, monkeypatch, tmp_path):
    """A machine's first photo converts the networks from inside the codec (bf16 autocast on)."""
    monkeypatch.setenv("VQC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "_COMPILED", {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert engine.runner(gan2.model, "encoder") is not None, engine.FAILURES
    assert (tmp_path / "cache" / "openvino" / engine.digest(gan2.model) / "encoder.xml").is_file()


def test_big_photos_run_their_full_resolution_layers_on_openvino(gan2, monkeypatch):
    """A photo run in tiles (``nets/streamed``) takes its full-resolution layers (``TILE_PARTS``)
    from OpenVINO and the rest from PyTorch: the map and picture agree with the whole-image path
    within the precision, as the whole networks on the two engines do."""
    from vqcodec.nets import streamed

    img = make_image(96, 160, seed=5)
    whole = codec.analyze(img, gan2, 64)
    pic = codec.synthesize(whole, gan2)
    monkeypatch.setattr(codec, "STREAM_PIXELS", 64 * 64)
    monkeypatch.setattr(streamed, "FULL_TILE", 48)
    asked, real = [], engine.runner

    def runner(model, part):
        run = real(model, part)
        asked.append((part, run is not None))
        return run

    monkeypatch.setattr(engine, "runner", runner)
    tiled = codec.analyze(img, gan2, 64)
    pic_t = codec.synthesize(whole, gan2)
    assert asked == [("head", True), ("tail", True)], engine.FAILURES
    assert (tiled.indices == whole.indices).mean() >= 0.95
    mse = ((pic.astype(np.float64) - pic_t) ** 2).mean()
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 38
