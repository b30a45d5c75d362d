"""Packetized files (format version 2), loss simulation and recovery."""

import numpy as np
import pytest

from vqcodec import channel, codec, container, interleave, recovery
from vqcodec.cli import main
from vqcodec.container import Header
from vqcodec.errors import VqcFormatError, VqcUsageError

from .conftest import make_image

H2 = Header(0xABCD0123, 64, 1, 100, 60, version=container.PACKET_VERSION)


def test_v2_round_trip_and_overhead():
    payloads = [bytes([i]) * (10 + i) for i in range(8)]
    data = container.pack_packets(H2, payloads)
    scan = container.scan_packets(data)
    assert scan.header == H2 and scan.packets == 8 and scan.damaged == 0
    assert [scan.payloads[i] for i in range(8)] == payloads
    assert len(data) == 3 * container.V2_HEADER_BYTES + sum(len(p) + 5 for p in payloads)
    assert container.is_packetized(data) and not container.is_packetized(container.pack(Header(1, 8, 1, 4, 4), b""))
    with pytest.raises(VqcFormatError, match="packetized"):
        container.unpack(data)


def test_damaged_header_copies_and_packets():
    payloads = [bytes([i]) * 20 for i in range(6)]
    data = bytearray(container.pack_packets(H2, payloads))
    data[5] ^= 0xFF  # first header copy
    data[container.V2_HEADER_BYTES + 7] ^= 0x01  # second copy
    start = 3 * container.V2_HEADER_BYTES
    data[start + 3 + 25 + 10] ^= 0x10  # payload byte of packet 1
    scan = container.scan_packets(bytes(data))
    assert scan.header_copies_ok == 1 and scan.header == H2
    assert sorted(scan.payloads) == [0, 2, 3, 4, 5] and scan.lost == [1] and scan.damaged >= 1
    for i in range(3):
        data[i * container.V2_HEADER_BYTES + 4] ^= 0x01
    with pytest.raises(VqcFormatError, match="header copy"):
        container.scan_packets(bytes(data))


def test_damaged_length_field_resynchronises():
    payloads = [bytes([i]) * 30 for i in range(5)]
    data = bytearray(container.pack_packets(H2, payloads))
    start = 3 * container.V2_HEADER_BYTES
    data[start + 1] = 0xFF  # packet 0 claims a huge length
    scan = container.scan_packets(bytes(data))
    assert sorted(scan.payloads) == [1, 2, 3, 4]


def test_interleave_scatters_neighbours():
    a = interleave.assignment(32, 48, 16)
    assert sorted(np.unique(a)) == list(range(16))
    counts = np.bincount(a.ravel())
    assert counts.max() - counts.min() <= 48
    for dr, dc in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        shifted = np.roll(np.roll(a, dr, 0), dc, 1)
        assert (shifted[1:-1, 1:-1] != a[1:-1, 1:-1]).all()
    assert (interleave.assignment(4, 4, 2) == np.indices((4, 4)).sum(0) % 2).all()


def test_packetized_codec_round_trip(tiny):
    img = make_image(80, 112, seed=4)
    enc = codec.analyze(img, tiny, 32)
    data = codec.pack(enc, tiny, packets=8)
    out, report = codec.decode_with_report(data, tiny)
    assert report.packets == 8 and report.intact
    assert np.array_equal(out, codec.synthesize(enc, tiny))
    fi = codec.info(data)
    assert fi.packets.packets == 8 and fi.header.width == 112


@pytest.mark.parametrize("loss", [0.1, 0.3, 0.5, 0.9, 1.0])
def test_any_loss_still_gives_an_image(tiny, loss):
    img = make_image(96, 128, seed=1)
    data = codec.encode(img, 16, tiny) and codec.pack(codec.analyze(img, tiny, 16), tiny, packets=16)
    for seed in range(3):
        bad, rep = channel.corrupt(data, loss=loss, seed=seed)
        for method in ("auto", "none", "neighbour"):
            if len(rep.dropped) == 16:  # nothing of the map arrived: an error, not an invented picture
                with pytest.raises(VqcFormatError, match="every packet of the index map was lost"):
                    codec.decode_with_report(bad, tiny, method=method)
                continue
            out, report = codec.decode_with_report(bad, tiny, method=method)
            assert out.shape == img.shape
            assert len(report.lost_packets) == len(rep.dropped)
    if loss == 1.0:
        assert len(rep.dropped) == 16


def test_bit_flips_become_losses_not_wrong_indices(tiny):
    img = make_image(96, 128, seed=2)
    enc = codec.analyze(img, tiny, 64)
    data = codec.pack(enc, tiny, packets=12)
    for seed in range(5):
        bad, rep = channel.corrupt(data, ber=2e-3, seed=seed, shuffle=True, duplicate=0.3)
        got, _, report = codec.unpack_packets(bad, tiny, method="none")
        assign = interleave.assignment(*enc.indices.shape[1:], 12)
        for p in range(12):
            if p not in report.lost_packets:
                assert np.array_equal(got.indices[:, assign == p], enc.indices[:, assign == p])


def test_loss_patterns_are_seeded_and_have_the_right_rate():
    rng = np.random.default_rng(0)
    iid = channel.loss_pattern(20000, 0.3, 1, rng)
    assert abs(iid.mean() - 0.3) < 0.02
    bursty = channel.loss_pattern(20000, 0.3, 4, np.random.default_rng(1))
    assert abs(bursty.mean() - 0.3) < 0.04
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], bursty.astype(int), [0]]))))[::2]
    assert 3 < runs.mean() < 5
    a = channel.loss_pattern(50, 0.5, 2, np.random.default_rng(7))
    assert (a == channel.loss_pattern(50, 0.5, 2, np.random.default_rng(7))).all()
    with pytest.raises(VqcUsageError):
        channel.loss_pattern(5, 1.5, 1, rng)


def test_corrupt_needs_a_packetized_file(tiny):
    with pytest.raises(VqcUsageError, match="--packets"):
        channel.corrupt(codec.encode(make_image(32, 32), 16, tiny), loss=0.5)


def test_neighbour_recovery_beats_fixed_fill_on_smooth_maps():
    # a smooth map: each index equals its column band; holes should be filled by their band
    codes = np.random.default_rng(0).normal(size=(8, 4))
    idx = (np.arange(48)[None, None, :] // 6).repeat(32, axis=1).astype(np.int64)
    missing = np.random.default_rng(1).random((32, 48)) < 0.3
    import torch

    counts = np.ones(8, dtype=np.int64)
    counts[0] = 10
    fixed = recovery.recover(idx, missing, torch.tensor(codes, dtype=torch.float32), counts, "none")
    nb = recovery.recover(idx, missing, torch.tensor(codes, dtype=torch.float32), counts, "neighbour")
    assert (nb == idx).mean() > (fixed == idx).mean()
    assert (nb[:, ~missing] == idx[:, ~missing]).all()


def test_cli_packets_corrupt_info_decode(models_env, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(make_image(64, 96)).save(tmp_path / "a.png")
    assert main(["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.vqc"), "-k", "16", "--packets", "8",
                 "--model", str(models_env), "-q"]) == 0  # fmt: skip
    Image.fromarray(make_image(128, 192)).save(tmp_path / "big.png")
    assert main(["encode", str(tmp_path / "big.png"), "-o", str(tmp_path / "b.vqc"), "-k", "16", "--packets", "16B",
                 "--model", str(models_env), "-q"]) == 0  # fmt: skip
    assert container.scan_packets((tmp_path / "b.vqc").read_bytes()).packets > 1
    assert main(["corrupt", str(tmp_path / "a.vqc"), "--loss", "0.5", "-o", str(tmp_path / "l.vqc"), "--seed",
                 "3"]) == 0  # fmt: skip
    assert "dropped" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "l.vqc")]) == 0
    assert "lost" in capsys.readouterr().out
    assert main(["decode", str(tmp_path / "l.vqc"), "-o", str(tmp_path / "l.png"), "--recover", "neighbour"]) == 0
    assert "recovered with 'neighbour'" in capsys.readouterr().err
    assert Image.open(tmp_path / "l.png").size == (96, 64)
    assert main(["encode", str(tmp_path / "a.png"), "--packets", "0", "--model", str(models_env)]) == 2
    assert main(["decode", str(tmp_path / "l.vqc"), "--recover", "magic"]) == 2
    assert main(["corrupt", str(tmp_path / "a.vqc"), "--loss", "1", "-o", str(tmp_path / "all.vqc")]) == 0
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "all.vqc"), "-o", str(tmp_path / "all.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "every packet of the index map was lost (8 of 8)" in err and "\n" not in err
    assert not (tmp_path / "all.png").exists()


# -- parity packets (format version 3) -------------------------------------------------------------


def _spans_dropped(data: bytes, drop: set[int]) -> bytes:
    spans = container.packet_spans(data)
    return data[: spans[0][0]] + b"".join(data[a:b] for i, (a, b) in enumerate(spans) if i not in drop)


def test_parity_rebuilds_any_r_lost_packets_exactly():
    import itertools
    import random

    rng = random.Random(0)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(8)]
    data = container.pack_packets(H2, payloads, parity=3)
    assert data[3] == container.PARITY_VERSION and container.is_packetized(data)
    for drop in itertools.combinations(range(11), 3):  # every way to lose 3 of the 8 + 3
        scan = container.scan_packets(_spans_dropped(data, set(drop)))
        assert [scan.payloads[i] for i in range(8)] == payloads, drop
        assert set(scan.rebuilt) == {d for d in drop if d < 8}
    scan = container.scan_packets(_spans_dropped(data, {0, 1, 2, 3}))  # one more than R: no rebuild
    assert scan.lost == [0, 1, 2, 3] and not scan.rebuilt and not scan.parity_mismatch
    assert all(scan.payloads[i] == payloads[i] for i in scan.payloads)


def test_parity_that_disagrees_with_the_data_rebuilds_nothing():
    import binascii
    import struct

    payloads = [bytes([i]) * (5 + i) for i in range(6)]
    data = bytearray(container.pack_packets(H2, payloads, parity=2))
    a, b = container.packet_spans(bytes(data))[6]  # the first parity packet: change it, fix its CRC
    data[a + 3] ^= 0x5A
    data[b - 2 : b] = struct.pack("<H", binascii.crc_hqx(bytes(data[a : b - 2]), 0xFFFF))
    spans = container.packet_spans(bytes(data))
    lossy = bytes(data[: spans[0][0]]) + b"".join(bytes(data[x:y]) for i, (x, y) in enumerate(spans) if i not in (1, 7))
    scan = container.scan_packets(lossy)
    assert scan.parity_mismatch and 1 in scan.lost and not scan.rebuilt


def test_parity_counts_are_bounded():
    with pytest.raises(VqcUsageError, match="0..63"):
        container.pack_packets(H2, [b"x"] * 4, parity=64)
    with pytest.raises(VqcUsageError, match="exceed 255"):
        container.pack_packets(H2, [b"x"] * 250, parity=10)


def test_parity_file_decodes_identically_after_r_losses(tiny):
    img = make_image(96, 128, seed=5)
    enc = codec.analyze(img, tiny, 16)
    data = codec.pack(enc, tiny, packets=8, parity=2)
    for seed in range(6):
        lossy, rep = channel.corrupt(data, loss=0.2, seed=seed)
        got, _, report = codec.unpack_packets(lossy, tiny)
        if len(rep.dropped) <= 2:
            assert np.array_equal(got.indices, enc.indices) and report.intact
        assert report.parity == 2
    with pytest.raises(VqcUsageError, match="--packets"):
        codec.pack(enc, tiny, parity=2)


def test_cli_parity_round_trip_and_info(models_env, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(make_image(64, 96)).save(tmp_path / "a.png")
    args = ["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.vqc"), "-k", "16", "--model", str(models_env)]
    assert main([*args, "--packets", "8", "--parity", "2", "-q"]) == 0
    assert main([*args, "--parity", "2"]) == 2  # parity without packets
    assert main([*args, "--packets", "8", "--parity", "99"]) == 2
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.vqc")]) == 0
    assert "2 declared, 2 present" in capsys.readouterr().out
