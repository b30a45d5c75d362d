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
    monkeypatch.setenv("VQC_INT8", "0")  # the int8 decoder is checked on its own below
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

    monkeypatch.setenv("VQC_INT8", "0")  # tiles stay in bf16: compare like with like
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


def test_the_int8_decoder_spec_travels_with_the_bundle_and_fits_its_weights(gan2, monkeypatch):
    spec = gan2.model.pixels_int8
    assert spec is not None and spec["digest"] == engine.digest(gan2.model)
    assert len(spec["activations"]) > 0 and len(spec["weights"]) > 0
    assert engine.int8_wanted(gan2.model, "decoder") == engine._cpu_has(engine.INT8_FLAGS)
    assert not engine.int8_wanted(gan2.model, "encoder")  # the index map's network stays bf16
    monkeypatch.setenv("VQC_INT8", "0")
    assert not engine.int8_wanted(gan2.model, "decoder")
    monkeypatch.delenv("VQC_INT8")
    monkeypatch.setitem(spec, "digest", "0" * 16)  # calibrated for other weights: not used
    assert not engine.int8_wanted(gan2.model, "decoder")


def test_int8_decoder_draws_nearly_the_bf16_picture(gan2, engine_cache):
    """The spec's quantisers go where it says (one per activation entry, int8 weights for each
    named convolution) and the picture moves by int8 noise, not more (on Kodak: 32-33 dB, LPIPS
    and DISTS within +0.004, docs/results.md)."""
    import openvino as ov

    from vqcodec.nets import int8_pixels

    spec = gan2.model.pixels_int8
    net = int8_pixels.apply(engine.float_ir(gan2.model, "decoder"), spec)
    kinds = [(op.get_type_name(), op.get_output_element_type(0)) for op in net.get_ordered_ops()]
    assert sum(k == "FakeQuantize" for k, _ in kinds) == len(spec["activations"])
    assert sum(k == "Constant" and t == ov.Type.i8 for k, t in kinds) == len(spec["weights"])
    enc = codec.analyze(make_image(96, 128, seed=6), gan2, 64)
    z = gan2.model.quantize.dequantize(torch.from_numpy(enc.indices)[None], gan2.codebook(64)).float()
    threads, bf16 = torch.get_num_threads(), False
    plain = engine._compile(gan2.model, "decoder", threads, bf16, False)(z).numpy()
    int8 = engine._compile(gan2.model, "decoder", threads, bf16, True)(z).numpy()
    assert not engine.FAILURES or "int8" not in engine.FAILURES[-1]
    mse = ((plain - int8) ** 2).mean() / 4  # pictures in [-1, 1]
    assert 0 < mse and 10 * np.log10(1 / mse) > 24


def test_a_spec_that_does_not_fit_the_graph_keeps_the_float_decoder(gan2, monkeypatch):
    spec = dict(gan2.model.pixels_int8)
    spec["activations"] = [dict(spec["activations"][0], source="no such node")]
    monkeypatch.setattr(gan2.model, "pixels_int8", spec)
    monkeypatch.setattr(engine, "FAILURES", [])
    run = engine._compile(gan2.model, "decoder", torch.get_num_threads(), False, True)
    assert run is not None and "int8" in engine.FAILURES[0]
    z = torch.zeros(1, gan2.model.config.embed_dim, 2, 3)
    assert tuple(run(z).shape) == (1, 3, 32, 48)


def test_a_damaged_int8_spec_is_a_damaged_bundle(tmp_path):
    from vqcodec.errors import VqcModelError

    src = zoo.find_bundle("vqc-gan2")
    for f in src.iterdir():
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "pixels-int8.json").unlink()
    (tmp_path / "pixels-int8.json").write_text('{"format": 1, "activations": []}\n')
    with pytest.raises(VqcModelError, match="pixels-int8.json"):
        zoo.load_model(tmp_path)
