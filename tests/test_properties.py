"""Property tests (hypothesis): any byte string decodes to an image or raises a VqcError."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqcodec import codec, container
from vqcodec.container import CodingMode, Header
from vqcodec.errors import VqcError, VqcFormatError

from .conftest import make_image

FAST = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip

headers = st.builds(
    Header,
    model_id=st.integers(0, 2**32 - 1),
    codebook_size=st.integers(2, 65536),
    m=st.integers(1, 16),
    width=st.integers(1, 65535),
    height=st.integers(1, 65535),
    mode=st.sampled_from(list(CodingMode)),
)


@FAST
@given(headers, st.binary(max_size=64))
def test_pack_unpack_round_trip(header, payload):
    assert container.unpack(container.pack(header, payload)) == (header, payload)


@FAST
@given(st.binary(max_size=128))
def test_reader_accepts_or_raises_format_error(blob):
    try:
        container.unpack(blob)
    except VqcFormatError as e:
        assert "\n" not in str(e)


@FAST
@given(st.binary(max_size=96))
def test_reader_with_valid_magic_and_crc(blob):
    """Bytes that pass the CRC must still be validated field by field."""
    import struct
    import zlib

    body = b"VQC\x01" + blob
    data = body + struct.pack("<I", zlib.crc32(body))
    try:
        h, payload = container.unpack(data)
        h.validate()
    except VqcFormatError:
        pass


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_whole_decode_path_never_escapes(tiny, data):
    """Forged files with the right model id: an image of the declared size, or a VqcError."""
    w = data.draw(st.integers(1, 80))
    h = data.draw(st.integers(1, 80))
    k = data.draw(st.sampled_from([8, 16, 32, 64, 3, 1000]))
    mode = data.draw(st.sampled_from(list(CodingMode)))
    payload = data.draw(st.binary(max_size=80))
    blob = container.pack(Header(tiny.model_id, k, data.draw(st.sampled_from([1, 1, 2])), w, h, mode), payload)
    try:
        out = codec.decode(blob, tiny)
    except VqcError as e:
        assert "\n" not in str(e)
    else:
        assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_every_truncation_and_bit_flip_of_a_real_file(tiny):
    data = codec.encode(make_image(40, 56), 32, tiny)
    for cut in range(len(data)):
        try:
            codec.decode(data[:cut], tiny)
            raise AssertionError(f"truncation to {cut} bytes decoded")
        except VqcFormatError:
            pass
    for pos in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            try:
                codec.decode(bytes(bad), tiny)
                raise AssertionError(f"bit flip at {pos}.{bit} decoded")
            except VqcError:
                pass


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_packet_permutations_duplicates_losses_and_flips(tiny, data):
    """Any mix of lost, duplicated, reordered and bit-flipped packets of a real packetized file (with
    or without parity) decodes to an image of the right size; packets that survive intact are used
    as they are, and any N of N + R packets give the whole map."""
    from vqcodec import container

    packets = data.draw(st.integers(1, 12))
    k = data.draw(st.sampled_from([8, 16, 32, 64]))
    img = make_image(48, 64, seed=packets)
    enc = codec.analyze(img, tiny, k)
    parity = data.draw(st.integers(0, 3))  # version 3 files too: parity packets are packets like any other
    blob = codec.pack(enc, tiny, packets=packets, parity=parity)
    spans = container.packet_spans(blob)
    head, pk = blob[: spans[0][0]], [blob[a:b] for a, b in spans]
    keep = data.draw(st.lists(st.integers(0, len(pk) - 1), max_size=2 * len(pk)))  # drops, dups, any order
    body = bytearray(head + b"".join(pk[i] for i in keep))
    flips = data.draw(st.lists(st.integers(0, max(0, len(body) - 1)), max_size=4))
    for pos in flips:
        body[pos] ^= 0x5A
    try:
        out, report = codec.decode_with_report(
            bytes(body), tiny, method=data.draw(st.sampled_from(["none", "neighbour"]))
        )
    except VqcError as e:
        assert "\n" not in str(e)  # e.g. all three header copies hit
    else:
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        n_data = len(pk) - parity
        if len(set(keep)) >= n_data and (set(range(n_data)) <= set(keep) or parity) and not flips:
            # every data packet arrived, or enough packets for the parity to rebuild the rest
            assert report.missing_positions == 0 and np.array_equal(out, codec.synthesize(enc, tiny))
