"""Big images: the taef2 backbone run tile by tile (``nets.streamed``) gives what the whole-image
network gives, the codec switches to it above ``STREAM_PIXELS``, the context coder works in
bands, and models that cannot stream keep their old size limit."""

import numpy as np
import pytest
import torch
from torch import nn

from vqcodec import codec, context
from vqcodec.errors import VqcImageError
from vqcodec.imageio import pad_to_multiple
from vqcodec.nets import streamed, transformer
from vqcodec.zoo import DEFAULT_MODEL, load_model

from .conftest import make_image


@pytest.fixture(scope="module")
def gen():
    return load_model("vqc-gen")


@pytest.fixture(autouse=True)
def pytorch_networks(monkeypatch):
    """Tiles against the whole image, both in PyTorch: the tiling is exact in any one engine, and
    big photos always run in PyTorch (the whole-image path may run on OpenVINO, within precision)."""
    monkeypatch.setenv("VQC_ENGINE", "torch")


def _whole_and_streamed(bundle, pixels, tile, low_tile):
    """(latent, image) of the whole network and of the streamed one with small tiles."""
    model = bundle.model
    lat = codec.encode_latent(pixels, bundle)
    padded = pad_to_multiple(pixels, bundle.stride)
    with torch.inference_mode(), model.autocast():
        z = streamed.encode_latent(model, torch.from_numpy(padded).permute(2, 0, 1)[None], tile, low_tile).float()
    enc = codec.quantize(lat, bundle, 64)
    ref = codec.synthesize(enc, bundle)
    book = bundle.codebook(64)
    zq = model.quantize.dequantize(torch.from_numpy(enc.indices)[None], book)
    with torch.inference_mode(), model.autocast():
        img = streamed.decode_latent(model, zq.contiguous(memory_format=model.memory_format), tile, low_tile)
    out = img[0].permute(1, 2, 0).numpy()[: ref.shape[0], : ref.shape[1]]
    return lat.z, z, ref, out


# the default bundle too: its decoder may have more blocks than vqc-gen's (vqc train --dec-blocks)
@pytest.mark.parametrize("name, tile, low_tile", [("vqc-gen", 64, 3), ("vqc-gen", 128, 8), (DEFAULT_MODEL, 64, 3)])
def test_streamed_network_equals_the_whole_one(name, tile, low_tile):
    # tiles far smaller than the image (and than the encoder's 65-pixel reach): many seams, and
    # GroupNorm statistics gathered over many tiles; still the whole network's numbers
    pixels = make_image(144, 208, seed=3)
    z_whole, z_tiled, ref, out = _whole_and_streamed(load_model(name), pixels, tile, low_tile)
    assert torch.allclose(z_whole, z_tiled, atol=1e-4, rtol=1e-4)
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_codec_streams_big_images_with_the_same_file_and_picture(gen, monkeypatch):
    pixels = make_image(96, 160, seed=4)
    whole = codec.encode(pixels, 64, gen)
    picture = codec.decode(whole, gen)
    seen = []
    monkeypatch.setattr(codec, "STREAM_PIXELS", 64 * 64)
    monkeypatch.setattr(streamed, "FULL_TILE", 48)
    assert codec.streams(gen, 160, 96)
    with codec.progress(lambda stage, share: seen.append((stage, share))):
        tiled = codec.encode(pixels, 64, gen)
        again = codec.decode(tiled, gen)
    assert tiled == whole
    assert np.abs(again.astype(int) - picture.astype(int)).max() <= 1
    assert {s for s, _ in seen} == {"encoding", "decoding"}
    assert max(v for s, v in seen if s == "encoding") == 1.0 and max(v for s, v in seen if s == "decoding") == 1.0


def test_context_coder_in_bands_round_trips(gen, monkeypatch):
    net = gen.recovery_model
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 64, size=(1, 40, 37))
    one_batch = context.encode_context(idx, net, 64, gen.context_tag, gen.context_levels)
    monkeypatch.setattr(transformer, "BAND_TILES", 3)  # 3 x 3 tiles: one tile row per band
    monkeypatch.setattr(transformer.IndexTransformer.bands, "__defaults__", (16, 3))
    monkeypatch.setattr(context, "CHUNK", 50)
    banded = context.encode_context(idx, net, 64, gen.context_tag, gen.context_levels)
    back = context.decode_context(banded, net, 64, 1, 40, 37, gen.context_tag, gen.context_levels)
    assert np.array_equal(back, idx)
    assert abs(len(banded) - len(one_batch)) <= 0.02 * len(one_batch)  # the same model, in bands


def test_bands_cover_the_map_and_keep_small_maps_whole():
    bands = transformer.IndexTransformer.bands(100, 90, 16, 12)  # 7 x 6 tiles, 12 per band: two tile rows each
    assert bands[0] == (0, 32) and bands[-1][1] >= 100
    assert all(b[1] == c[0] for b, c in zip(bands, bands[1:], strict=False))
    assert transformer.IndexTransformer.bands(256, 256, 16, 256) == [
        (0, 256)
    ]  # 16 x 16 tiles: one batch, as before bands


def test_reach_refuses_global_layers_and_counts_strides():
    assert streamed.reach([nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, stride=2, padding=1),
                           nn.Conv2d(3, 3, 3, padding=1)]) == 4  # fmt: skip
    with pytest.raises(ValueError, match="whole image"):
        streamed.reach([nn.GroupNorm(1, 3)])


def test_models_that_cannot_stream_keep_their_limit(tiny, monkeypatch):
    if tiny.model.config.backbone == "taef2":
        pytest.skip("the tiny test bundle streams")
    monkeypatch.setattr(codec, "WHOLE_MAX_PIXELS", 32 * 32)
    with pytest.raises(VqcImageError, match="runs whole images only"):
        codec.encode(make_image(48, 48), 8, tiny)
