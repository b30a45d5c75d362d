import numpy as np
import pytest
import torch

import vqcodec
from vqcodec import codec, container
from vqcodec.container import CodingMode
from vqcodec.errors import VqcFormatError, VqcImageError, VqcModelError, VqcUsageError

from .conftest import build_tiny_bundle, make_image


@pytest.mark.parametrize("h,w", [(1, 1), (5, 3), (16, 16), (17, 33), (65, 257), (48, 64)])
def test_round_trip_any_size(tiny, h, w):
    img = make_image(h, w)
    data = codec.encode(img, 16, tiny)
    out = codec.decode(data, tiny)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    header, _ = container.unpack(data)
    assert (header.width, header.height, header.codebook_size, header.m) == (w, h, 16, 1)


@pytest.mark.parametrize("k", [8, 16, 32, 64])
def test_every_k_and_rate_grows_with_k(tiny, k):
    img = make_image(64, 96, seed=5)
    enc = codec.analyze(img, tiny, k)
    assert enc.indices.shape == (1, 4, 6)
    assert enc.indices.max() < k
    data = codec.pack(enc, tiny)
    back, _ = codec.unpack(data, tiny)
    assert np.array_equal(back.indices, enc.indices)


def test_raw_mode(tiny):
    img = make_image(40, 56)
    enc = codec.analyze(img, tiny, 64)
    data = codec.pack(enc, tiny, CodingMode.RAW)
    back, _ = codec.unpack(data, tiny)
    assert np.array_equal(back.indices, enc.indices)
    assert codec.info(data).header.mode == CodingMode.RAW


def test_deterministic_bytes(tiny):
    img = make_image(80, 112, seed=2)
    assert codec.encode(img, 32, tiny) == codec.encode(img, 32, tiny)


def test_same_indices_with_one_or_two_threads(tiny):
    img = make_image(96, 128, seed=3)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = codec.encode(img, 64, tiny)
        da = codec.decode(a, tiny)
        torch.set_num_threads(2)
        b = codec.encode(img, 64, tiny)
        db = codec.decode(a, tiny)
    finally:
        torch.set_num_threads(old)
    assert codec.unpack(a, tiny)[0].indices.tolist() == codec.unpack(b, tiny)[0].indices.tolist()
    assert np.abs(da.astype(int) - db.astype(int)).max() <= 1


def test_unavailable_k_lists_the_choices(tiny):
    with pytest.raises(VqcUsageError, match="8, 16, 32, 64"):
        codec.encode(make_image(16, 16), 128, tiny)


def test_wrong_model_is_refused(tiny, tmp_path):
    other = vqcodec.load_model(build_tiny_bundle(tmp_path / "other", seed=1, name="other"))
    assert other.model_id != tiny.model_id
    data = codec.encode(make_image(32, 32), 16, tiny)
    with pytest.raises(VqcModelError, match="model id"):
        codec.decode(data, other)


def test_decoder_finds_model_by_id(models_env, tiny):
    data = codec.encode(make_image(32, 48), 16, tiny)
    assert codec.decode(data).shape == (32, 48, 3)


def test_unknown_model_id(models_env, tiny):
    data = bytearray(codec.encode(make_image(32, 32), 16, tiny))
    header, payload = container.unpack(bytes(data))
    forged = container.pack(container.Header(0xDEADBEEF, 16, 1, 32, 32), payload)
    with pytest.raises(VqcModelError, match="deadbeef"):
        codec.decode(forged)


def test_pixel_limits(tiny):
    with pytest.raises(VqcImageError, match="limit"):
        codec.encode(make_image(64, 64), 16, tiny, max_pixels=1000)
    data = codec.encode(make_image(64, 64), 16, tiny)
    with pytest.raises(VqcFormatError, match="limit"):
        codec.decode(data, tiny, max_pixels=1000)


def test_huge_declared_size_is_refused_before_allocation(tiny):
    forged = container.pack(container.Header(tiny.model_id, 16, 1, 65535, 65535), b"\x00" * 8)
    with pytest.raises(VqcFormatError, match="limit"):
        codec.decode(forged, tiny)


def test_bad_payload_never_crashes(tiny):
    rng = np.random.default_rng(0)
    for n in range(0, 30, 3):
        payload = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        forged = container.pack(container.Header(tiny.model_id, 16, 1, 48, 32), payload)
        try:
            out = codec.decode(forged, tiny)
        except VqcFormatError:
            continue
        assert out.shape == (32, 48, 3)


def test_bpp_counts_the_whole_file(tiny):
    data = codec.encode(make_image(64, 64), 16, tiny)
    fi = codec.info(data)
    assert fi.file_bytes == len(data)
    assert fi.bpp == pytest.approx(len(data) * 8 / (64 * 64))


def test_reconstruction_is_a_function_of_the_indices(tiny):
    img = make_image(48, 48)
    enc = codec.analyze(img, tiny, 32)
    assert np.array_equal(codec.synthesize(enc, tiny), codec.synthesize(enc, tiny))


def _fake_sizes(sizes: dict[int, int], calls: list[int]):
    """A pack function whose file size per K is ``sizes`` (to test the search, not the coder)."""

    def pack(enc):
        calls.append(enc.codebook_size)
        return b"x" * sizes[enc.codebook_size]

    return pack


def test_fit_binary_search_and_fallbacks(tiny):
    from vqcodec.errors import VqcBudgetError

    latent = codec.encode_latent(make_image(40, 72), tiny)
    calls: list[int] = []
    monotone = {8: 10, 16: 20, 32: 30, 64: 40}
    for budget, want in [(10, 8), (25, 16), (30, 32), (99, 64)]:
        calls.clear()
        data, enc = codec.fit(latent, tiny, budget, _fake_sizes(monotone, calls))
        assert enc.codebook_size == want and len(data) <= budget
        assert len(calls) <= 3 and len(set(calls)) == len(calls)  # log2(4) + 1 packs, none twice
    # not monotone: no probe of the binary search fits, yet K=32 does; then the climb past it
    calls.clear()
    data, enc = codec.fit(latent, tiny, 20, _fake_sizes({8: 30, 16: 50, 32: 10, 64: 60}, calls))
    assert enc.codebook_size == 32 and len(data) == 10
    data, enc = codec.fit(latent, tiny, 25, _fake_sizes({8: 10, 16: 15, 32: 20, 64: 30}, []), sizes=[8, 16, 32])
    assert enc.codebook_size == 32
    with pytest.raises(VqcBudgetError) as e:
        codec.fit(latent, tiny, 9, _fake_sizes({8: 30, 16: 12, 32: 40, 64: 60}, []))
    assert e.value.smallest == 12  # the true minimum, found by trying every K


def test_fit_matches_analyze(tiny):
    """The shared encoder pass gives the index maps ``analyze`` gives for each K."""
    img = make_image(64, 96, seed=2)
    latent = codec.encode_latent(img, tiny)
    for k in tiny.codebook_sizes:
        assert np.array_equal(codec.quantize(latent, tiny, k).indices, codec.analyze(img, tiny, k).indices)
    sizes = {k: len(codec.pack(codec.analyze(img, tiny, k), tiny, packets=4)) for k in tiny.codebook_sizes}
    budget = sorted(sizes.values())[1]
    data = codec.encode_within(img, budget, tiny, packets=4)  # the packet count stays, the budget covers all
    fi = codec.info(data)
    assert len(data) <= budget and fi.packets is not None and fi.packets.packets == 4
    assert fi.header.codebook_size == max(k for k, n in sizes.items() if n <= budget)
