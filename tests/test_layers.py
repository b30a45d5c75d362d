"""Layered (progressive) files: nested maps, every cut point, trim, clear errors, the CLI."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

import vqcodec
from vqcodec import codec, layerfile, layers, options, progressive
from vqcodec.container import CodingMode
from vqcodec.errors import VqcBudgetError, VqcFormatError, VqcModelError, VqcUsageError
from vqcodec.zoo import load_model

from .conftest import make_image
from .test_cli import run

CHAIN = (8, 64, 1024)


@pytest.fixture(scope="module")
def gan2():
    return load_model("vqc-gan2")


@pytest.fixture(scope="module")
def small_file(gan2):
    """A layered file of a 48x64 image (3 x 4 positions) and its maps: small enough to cut everywhere."""
    data, encs = progressive.compress(make_image(48, 64, seed=4), gan2, CHAIN)
    return data, encs


def test_the_default_model_ships_the_chain(gan2):
    assert CHAIN in gan2.layer_sets()
    ls = gan2.layer_set(CHAIN)
    assert ls.sizes == CHAIN and len(ls.weights) == 3
    assert ls.books[-1] is gan2.codebook(1024)  # the top layer is the single-layer book
    assert ls.draw_books[0] is gan2.codebook(8)  # coarse layers drawn with the flat books (manifest "draw": "flat")
    for i, kids in enumerate(ls.children):  # a tree: every fine code under exactly one parent
        assert sorted(np.concatenate(kids).tolist()) == list(range(CHAIN[i + 1]))


def test_maps_are_nested_and_the_file_round_trips(gan2):
    img = make_image(96, 128, seed=1)
    data, encs = progressive.compress(img, gan2, CHAIN)
    ls = gan2.layer_set(CHAIN)
    for i in range(2):
        assert np.array_equal(ls.parents[i][encs[i + 1].indices], encs[i].indices)
    enc, _, report = codec.unpack_any(data)
    assert np.array_equal(enc.indices, encs[-1].indices) and enc.codebook_size == 1024
    assert report.layers == CHAIN and report.layers_decoded == 3 and report.layer_problem == ""
    assert report.summary() == "layer 3 of 3 drawn (K=1024; layers 8,64,1024)"
    fi = vqcodec.info(data)
    assert fi.layers.complete == 3 and fi.header.version == layerfile.LAYER_VERSION
    assert fi.header.mode == codec.best_mode(gan2, 64)
    out = vqcodec.decode_report(data)
    assert out.image.size == (128, 96) and out.report.layers_decoded == 3


def test_each_prefix_decodes_its_own_layer(gan2):
    img = make_image(64, 96, seed=2)
    data, encs = progressive.compress(img, gan2, CHAIN)
    ends = layerfile.scan_layers(data).ends
    for n, end in enumerate(ends, 1):
        enc, _, report = codec.unpack_any(data[:end])
        assert report.layers_decoded == n and enc.codebook_size == CHAIN[n - 1]
        assert np.array_equal(enc.indices, encs[n - 1].indices)
        assert enc.book is gan2.layer_set(CHAIN).draw_books[n - 1]
        assert codec.synthesize(enc, gan2).shape == img.shape


def test_every_cut_point_decodes_the_last_complete_layer_or_says_why(small_file):
    data, encs = small_file
    ends = layerfile.scan_layers(data).ends
    for cut in range(len(data) + 1):
        try:
            enc, _, report = codec.unpack_any(data[:cut])
        except VqcFormatError as e:
            assert cut < ends[0], f"cut at {cut} of {len(data)} refused: {e}"
            assert "\n" not in str(e)
            continue
        complete = sum(e <= cut for e in ends)
        assert report.layers_decoded == complete, cut
        assert np.array_equal(enc.indices, encs[complete - 1].indices)
        assert (report.layer_problem == "") == (cut == len(data))


def test_base_layer_errors_name_the_problem(small_file):
    data, _ = small_file
    ends = layerfile.scan_layers(data).ends
    with pytest.raises(VqcFormatError, match="base layer is incomplete"):
        codec.unpack_any(data[: ends[0] - 1])
    with pytest.raises(VqcFormatError, match="truncated file"):
        codec.unpack_any(data[:12])  # inside the header
    bad = bytearray(data)
    bad[ends[0] - 6] ^= 0x40  # a payload byte of the base layer
    with pytest.raises(VqcFormatError, match="base layer failed its checksum"):
        codec.unpack_any(bytes(bad))


def test_a_damaged_refinement_falls_back_to_the_layer_below(small_file):
    data, encs = small_file
    ends = layerfile.scan_layers(data).ends
    bad = bytearray(data)
    bad[ends[1] - 5] ^= 0x01  # the last payload byte of layer 2
    enc, _, report = codec.unpack_any(bytes(bad))
    assert report.layers_decoded == 1 and "layer 2 failed its checksum" in report.layer_problem
    assert np.array_equal(enc.indices, encs[0].indices)


def test_bytes_after_the_last_layer_are_an_error(small_file):
    with pytest.raises(VqcFormatError, match="bytes after the last layer"):
        codec.unpack_any(small_file[0] + b"\x00")


def test_trim_is_the_prefix_the_encoder_writes(gan2):
    img = make_image(64, 96, seed=3)
    data, _ = progressive.compress(img, gan2, CHAIN)
    ends = layerfile.scan_layers(data).ends
    for budget in (ends[0], ends[1] - 1, ends[1], len(data) - 1, len(data), len(data) + 100):
        trimmed = vqcodec.trim(data, budget)
        assert len(trimmed) == max(e for e in ends if e <= budget) and trimmed == data[: len(trimmed)]
    for budget in (ends[1] - 1, len(data)):  # the encoder writes the same prefix for the budget
        assert vqcodec.trim(data, budget) == vqcodec.encode(img, model=gan2, layers=CHAIN, max_bytes=budget)
    with pytest.raises(VqcBudgetError, match="base layer alone needs"):
        vqcodec.trim(data, ends[0] - 1)
    with pytest.raises(VqcBudgetError):
        vqcodec.encode(img, model=gan2, layers=CHAIN, max_bytes=ends[0] - 1)
    with pytest.raises(VqcFormatError, match="not a layered file"):
        vqcodec.trim(vqcodec.encode(img, 64, gan2), 10_000)


def test_fewer_layers_use_the_shipped_chain(gan2):
    img = make_image(48, 80, seed=5)
    two = vqcodec.encode(img, model=gan2, layers="8,64")
    three, _ = progressive.compress(img, gan2, CHAIN)
    scan2, scan3 = layerfile.scan_layers(two), layerfile.scan_layers(three)
    assert scan2.sizes == (8, 64) and scan2.payloads == scan3.payloads[:2]
    assert codec.unpack_any(two)[2].summary() == "layer 2 of 2 drawn (K=64; layers 8,64)"


def test_static_layers_round_trip(gan2):
    img = make_image(64, 64, seed=6)
    data = vqcodec.encode(img, model=gan2, layers=CHAIN, entropy="static")
    assert vqcodec.info(data).header.mode == CodingMode.STATIC
    enc, _, report = codec.unpack_any(data)
    assert report.layers_decoded == 3
    ctx, encs = progressive.compress(img, gan2, CHAIN)
    assert np.array_equal(enc.indices, encs[-1].indices)


def test_refinement_costs_less_than_the_map_alone(gan2):
    """Coded given its parent, a refinement costs less than the same map as a single-layer file."""
    img = make_image(96, 128, seed=7)
    data, encs = progressive.compress(img, gan2, CHAIN)
    scan = layerfile.scan_layers(data)
    for i in (1, 2):
        alone = codec._code(encs[i].indices, gan2, CHAIN[i], CodingMode.INT8_PAIRED)
        assert len(scan.payloads[i]) < len(alone)


@pytest.mark.parametrize("bad", ["8", "64,8", "8,8,64", "a,b", "1,8", [8], (8, 64.0), "8,64,128,256,512,1024,2048,4096,8192"])
def test_bad_layer_chains_are_usage_errors(bad):
    with pytest.raises(VqcUsageError, match="--layers takes"):
        options.check_layers(bad)


def test_option_clashes_are_usage_errors(gan2, tiny):
    img = make_image(32, 32)
    with pytest.raises(VqcUsageError, match="codebook or layers"):
        vqcodec.encode(img, 64, gan2, layers=CHAIN)
    with pytest.raises(VqcUsageError, match="effort"):
        vqcodec.encode(img, model=gan2, layers=CHAIN, effort=2)
    with pytest.raises(VqcUsageError, match="int8, exact or static"):
        vqcodec.encode(img, model=gan2, layers=CHAIN, entropy="raw")
    with pytest.raises(VqcUsageError, match="no nested codebooks for layers 8,16"):
        vqcodec.encode(img, model=gan2, layers="8,16")
    with pytest.raises(VqcUsageError, match="it ships: none"):
        vqcodec.encode(img, model=tiny, layers="8,16")


def test_a_file_for_other_nested_books_is_refused(small_file, gan2):
    data = bytearray(small_file[0])
    header_end = layerfile.scan_layers(bytes(data)).ends[0] - 4 - len(layerfile.scan_layers(bytes(data)).payloads[0])
    header_end -= 1  # the base layer's one-byte length varint
    struct.pack_into("<H", data, header_end - 2, gan2.layer_set(CHAIN).tag ^ 0xFFFF)
    end = layerfile.scan_layers(bytes(small_file[0])).ends[0]
    data[end - 4 : end] = struct.pack("<I", zlib.crc32(bytes(data[: end - 4])))
    with pytest.raises(VqcModelError, match="other nested books"):
        codec.unpack_any(bytes(data[:end]))


def test_layer_set_checks_its_tables():
    book = torch.randn(8, 4)
    with pytest.raises(ValueError, match="parent table"):
        layers.LayerSet((4, 8), (np.full(8, 4),), (torch.randn(4, 4), book), (1.0, 1.0))
    with pytest.raises(ValueError, match="increasing"):
        layers.LayerSet((8, 4), (np.zeros(4, int),), (book, torch.randn(4, 4)), (1.0, 1.0))


def test_draw_books_must_fit_the_books():
    books = (torch.randn(4, 4), torch.randn(8, 4))
    with pytest.raises(ValueError, match="draw books"):
        layers.LayerSet((4, 8), (np.arange(8) % 4,), books, (1.0, 1.0), draw=(torch.randn(4, 3), books[1]))
    ls = layers.LayerSet((4, 8), (np.arange(8) % 4,), books, (1.0, 1.0))
    assert ls.draw_books is ls.books


def test_flat_draw_changes_the_coarse_picture_not_the_maps(tiny_bundle_dir, tmp_path):
    """Nested books fit on the tiny bundle and drawn with their refit vectors; then switched to
    the flat books' vectors (``vqc train-layers --draw-only --draw flat``): the maps, the bits and
    the tag stay, so a file written before decodes the same map, and its coarse layer is drawn
    with the flat K=8 book."""
    import dataclasses
    import shutil

    from vqcodec.train import layers as train_layers

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_bundle_dir, folder)
    bundle = load_model(folder)
    torch.manual_seed(0)
    latents = torch.cat([bundle.model.quantize.parts(codec.encode_latent(make_image(64, 96, s), bundle).z)[0]
                         for s in range(4)])  # fmt: skip
    ls, _ = train_layers.fit(bundle, latents, (8, 64), (1.0, 1.0), iters=2)
    train_layers.save(folder, ls, {"photos": 4, "draw": "books"})
    first = load_model(folder)
    assert first.layer_set((8, 64)).draw is None
    img = make_image(64, 96, seed=9)
    old_file, before = progressive.compress(img, first, (8, 64))
    assert torch.equal(before[0].book, ls.books[0])
    train_layers.main(["--model", str(folder), "--sizes", "8,64", "--draw-only", "--draw", "flat"])
    again = load_model(folder)
    flat = again.layer_set((8, 64))
    assert flat.tag == first.layer_set((8, 64)).tag  # the books' file, hence the tag written into files, unchanged
    assert flat.draw_books[0] is again.codebook(8) and flat.draw_books[1] is again.codebook(64)
    assert again.manifest["layers"]["8,64"]["photos"] == 4  # the fit's record kept
    data, after = progressive.compress(img, again, (8, 64))
    assert data == old_file  # same maps, same bits
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.indices, b.indices)
    prefix = codec.unpack_any(data[: layerfile.scan_layers(data).ends[0]], again)[0]
    assert prefix.book is again.codebook(8)
    drawn = codec.synthesize(prefix, again)
    refit = codec.synthesize(dataclasses.replace(prefix, book=ls.books[0]), again)
    assert drawn.shape == refit.shape and not np.array_equal(drawn, refit)
    with pytest.raises(SystemExit):
        train_layers.main(["--model", str(folder), "--sizes", "8,32", "--draw-only"])


def test_pillow_opens_a_layered_file(small_file, tmp_path):
    from PIL import Image

    import vqcodec.pillow  # noqa: F401  (registers the plugin)

    path = tmp_path / "l.vqc"
    path.write_bytes(small_file[0])
    with Image.open(path) as im:
        assert im.size == (64, 48)
        im.load()


def test_cli_encode_info_decode_trim(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(make_image(64, 96, seed=8)).save(src)
    vqc = tmp_path / "l.vqc"
    code, _, err = run(capsys, "encode", src, "-o", vqc, "--layers", "8,64,1024")
    assert code == 0, err
    assert "3 of 3 layers: 8,64,1024" in err
    code, out, _ = run(capsys, "info", vqc)
    assert code == 0 and "3 of 3 complete (K = 8,64,1024)" in out
    data = vqc.read_bytes()
    ends = layerfile.scan_layers(data).ends
    small = tmp_path / "s.vqc"
    code, _, err = run(capsys, "trim", vqc, "--max-bytes", ends[1], "-o", small)
    assert code == 0 and "2 of 3 layers" in err
    assert small.read_bytes() == data[: ends[1]]
    png = tmp_path / "out.png"
    code, _, err = run(capsys, "decode", small, "-o", png)
    assert code == 0 and "layer 2 of 3 drawn (K=64" in err
    code, out, _ = run(capsys, "info", small)
    assert "2 of 3 complete" in out and "the file ends after layer 2" in out
    none = tmp_path / "none.vqc"
    code, _, err = run(capsys, "trim", vqc, "--max-bytes", ends[0] - 1, "-o", none)
    assert code == 1 and "base layer alone needs" in err and not none.exists()
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "x.vqc", "--layers", "8,64", "--codebook", "64")
    assert code == 2 and "--layers" in err
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "x.vqc", "--layers", "64,8")
    assert code == 2 and "--layers takes" in err
    packets = tmp_path / "p.vqc"
    code, _, err = run(capsys, "encode", src, "-o", packets, "--layers", "8,64,1024", "--packets", 4, "--parity", "2,1,0")
    assert code == 0 and "4 packets each" in err
    code, _, err = run(capsys, "corrupt", packets, "--loss", 0.3, "-o", tmp_path / "lossy.vqc", "--seed", 1)
    assert code == 0
    code, _, err = run(capsys, "decode", tmp_path / "lossy.vqc", "-o", tmp_path / "lossy.png")
    assert code == 0 and "layer 1 (K=8)" in err
    code, out, _ = run(capsys, "info", packets)
    assert code == 0 and "layer 1 packets  4/4 present, parity 2/2" in out
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "y.vqc", "--layers", "8,64", "--packets", 4,
                       "--parity", "1,2,3")
    assert code == 2 and "one count per layer" in err and not (tmp_path / "y.vqc").exists()


# -- packetized layered files (format version 5) ----------------------------------------------------


def _drop(data: bytes, seqs: set[int]) -> bytes:
    """The file without the framed packets whose global sequence numbers are in ``seqs``."""
    from vqcodec import layerpackets

    spans = layerpackets.spans(data)
    head = data[: spans[0][0]]
    return head + b"".join(data[a:b] for a, b in spans if data[a] not in seqs)


@pytest.fixture(scope="module")
def packet_file(gan2):
    img = make_image(96, 128, seed=9)
    data = vqcodec.encode(img, model=gan2, layers=CHAIN, packets=8, parity="3,1,0")
    _, encs = progressive.compress(img, gan2, CHAIN)
    return data, encs


def test_packetized_layers_round_trip(packet_file, gan2):
    data, encs = packet_file
    enc, _, report = codec.unpack_any(data)
    assert np.array_equal(enc.indices, encs[-1].indices) and enc.hole_latents is None
    assert report.layers_decoded == 3 and report.intact
    assert report.layer_packets == ((8, 0, 3), (8, 0, 1), (8, 0, 0))
    assert vqcodec.info(data).layer_packets.sizes == CHAIN


def test_lost_refinement_packets_fall_back_to_the_parent(packet_file, gan2):
    """Top-layer packets 0 and 5 lost (layer 3 has no parity): their positions are drawn from the
    K=64 layer's code vectors, every other position from the top layer; nothing is predicted."""
    data, encs = packet_file
    top = (8 + 3) + (8 + 1)  # layer 3 starts after 8 + 3 and 8 + 1 packets
    enc, _, report = codec.unpack_any(_drop(data, {top, top + 5}))
    assert report.missing_positions == 0 and report.layers_decoded == 2
    from vqcodec import interleave

    hh, ww = enc.indices.shape[1:]
    lost = np.isin(interleave.assignment(hh, ww, 8), [0, 5])
    mask, vectors = enc.hole_latents
    assert np.array_equal(mask, lost)
    ls = gan2.layer_set(CHAIN)
    want = gan2.model.quantize.codes(ls.draw_books[1]).float()[torch.from_numpy(encs[1].indices[0][lost])]
    assert torch.allclose(torch.from_numpy(vectors), want)
    assert np.array_equal(enc.indices[0][~lost], encs[2].indices[0][~lost])


def test_each_layer_has_its_own_parity(packet_file):
    """Three base packets lost: the base layer's 3 parity packets rebuild them; one layer-2 packet
    lost: rebuilt from layer 2's single parity packet."""
    data, encs = packet_file
    enc, _, report = codec.unpack_any(_drop(data, {0, 1, 2, 11}))
    assert report.intact and report.layer_packets[0] == (5, 3, 3) and report.layer_packets[1] == (7, 1, 1)
    assert np.array_equal(enc.indices, encs[-1].indices)


def test_lost_base_packets_are_predicted_and_their_refinements_unused(packet_file):
    data, _ = packet_file
    enc, _, report = codec.unpack_any(_drop(data, {0, 1, 2, 3, 8, 9}))  # 4 base + 2 of its parity lost
    assert report.missing_positions > 0 and report.method
    assert report.layers_decoded == 0
    assert "recovered with" in report.summary()
    with pytest.raises(VqcFormatError, match="every packet of the base layer was lost"):
        codec.unpack_any(_drop(data, set(range(11))))  # refinements alone cannot be drawn


def test_packetized_layer_options(gan2):
    img = make_image(32, 48)
    with pytest.raises(VqcUsageError, match="one count per layer"):
        vqcodec.encode(img, model=gan2, layers=CHAIN, packets=4, parity="1,2")
    with pytest.raises(VqcUsageError, match="packet count per layer"):
        vqcodec.encode(img, model=gan2, layers=CHAIN, packets="200B")
    with pytest.raises(VqcUsageError, match="give --packets"):
        vqcodec.encode(img, model=gan2, layers=CHAIN, parity=2)
    with pytest.raises(VqcUsageError, match="static-coded"):
        vqcodec.encode(img, model=gan2, layers=CHAIN, packets=4, entropy="int8")
    with pytest.raises(VqcUsageError, match="exceed 255"):
        vqcodec.encode(img, model=gan2, layers=CHAIN, packets=80, parity=20)
    assert options.layer_parity("4,2,0", 3) == (4, 2, 0) and options.layer_parity(2, 3) == (2, 2, 2)


def test_every_header_copy_damaged_is_an_error(packet_file):
    from vqcodec import layerpackets

    data = bytearray(packet_file[0])
    size = layerpackets.copy_bytes(3)
    for i in range(3):
        data[i * size + 10] ^= 0xFF
    with pytest.raises(VqcFormatError, match="every header copy"):
        codec.unpack_any(bytes(data))
    data = bytearray(packet_file[0])
    data[10] ^= 0xFF  # one copy: the others still serve
    assert codec.unpack_any(bytes(data))[2].layers_decoded == 3
