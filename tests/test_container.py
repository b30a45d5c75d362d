import random

import pytest

from vqcodec import container
from vqcodec.container import CodingMode, Header
from vqcodec.errors import VqcFormatError

H = Header(model_id=0x1234ABCD, codebook_size=64, m=1, width=768, height=512, mode=CodingMode.STATIC)
PAYLOAD = bytes(range(200))


def test_round_trip_and_compact_header():
    data = container.pack(H, PAYLOAD)
    header, payload = container.unpack(data)
    assert header == H
    assert payload == PAYLOAD
    overhead = len(data) - len(PAYLOAD)
    assert overhead == container.header_size(H) + 4
    assert overhead <= 20


def test_golden_bytes():
    data = container.pack(Header(1, 8, 1, 16, 16), b"\x01\x02")
    # magic, version 1, model id 1 (LE), flags 0, K=8, m=1, 16x16, payload, CRC-32
    assert data.hex() == "5651430101000000000801101001025978c1f1"


@pytest.mark.parametrize("cut", range(0, 40))
def test_every_truncation_is_rejected(cut):
    data = container.pack(H, PAYLOAD[:20])
    if cut >= len(data):
        return
    with pytest.raises(VqcFormatError):
        container.unpack(data[:cut])


def test_every_bit_flip_is_rejected():
    data = container.pack(H, PAYLOAD[:24])
    for pos in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(VqcFormatError):
                container.unpack(bytes(bad))


def test_random_bytes_never_escape_as_other_errors():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randrange(0, 64)
        blob = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.5:
            blob = b"VQC\x01" + blob
        try:
            container.unpack(blob)
        except VqcFormatError:
            pass


def test_messages_name_the_problem():
    with pytest.raises(VqcFormatError, match="magic"):
        container.unpack(b"PNG\x00\x00\x00\x00\x00\x00")
    data = bytearray(container.pack(H, PAYLOAD))
    data[3] = 9
    with pytest.raises(VqcFormatError, match="version 9"):
        container.read_header(bytes(data))
    data = bytearray(container.pack(H, PAYLOAD))
    data[8] = 0x80
    with pytest.raises(VqcFormatError, match="reserved"):
        container.read_header(bytes(data))


@pytest.mark.parametrize(
    "bad",
    [
        Header(1, 1, 1, 10, 10),
        Header(1, 64, 0, 10, 10),
        Header(1, 64, 1, 0, 10),
        Header(1, 64, 1, 10, 70000),
        Header(2**32, 64, 1, 10, 10),
    ],
)
def test_invalid_headers_are_refused_on_write(bad):
    with pytest.raises(VqcFormatError):
        container.pack(bad, b"")


def test_overlong_varint():
    data = b"VQC\x01" + b"\x00" * 4 + b"\x00" + b"\xff\xff\xff\xff" + b"\x00" * 8
    with pytest.raises(VqcFormatError, match="varint"):
        container.read_header(data)
