"""The .vqc container, format version 1: the only module that knows the byte layout.

Layout (all integers little-endian; ``varint`` is unsigned LEB128, at most 3 bytes here)::

    offset  size    field
    0       3       magic  b"VQC"
    3       1       version (1)
    4       4       model id (uint32, from the bundle's manifest)
    8       1       flags: bits 0-2 coding mode (0 static range coding, 1 float context model,
                    2 raw fixed-width, 3 integer-exact context model, 4 int8 context model: 0.2.0,
                    5 int8 context model with paired groups: 0.3.0);
                    bits 3-7 reserved, must be 0 (a reader older than 0.2.0 refuses mode 4 as a
                    reserved bit, in one line)
    9       varint  K, codebook size (2 .. 65536)
    .       1       m, indices per latent position (1 .. 16)
    .       varint  image width  (1 .. 65535)
    .       varint  image height (1 .. 65535)
    .       ...     payload (the entropy coder's bytes)
    end-4   4       CRC-32 (zlib) of every byte before it

A Kodak image at K=64 is about 14 + payload bytes. ``docs/bitstream.md`` is the human spec.
Every read is bounded; any byte string either parses or raises ``VqcFormatError`` with a
one-line reason.
"""

from __future__ import annotations

import binascii
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from vqcodec.errors import VqcFormatError, VqcUsageError

MAGIC = b"VQC"
VERSION = 1
MAX_SIDE = 65535
MAX_K = 65536
MAX_M = 16
CRC_BYTES = 4
LAYER_VERSION = 4
"""Layered (progressive) files: the layout is ``vqcodec.layerfile``'s."""
LAYER_PACKET_VERSION = 5
"""Packetized layered files: the layout is ``vqcodec.layerpackets``'."""


class CodingMode(IntEnum):
    STATIC = 0  # range coding with the bundle's per-K index frequencies
    CONTEXT = 1  # range coding with the bundle's transformer context model (unpacketized only)
    RAW = 2  # fixed-width ceil(log2 K) bits per index
    EXACT = 3  # range coding with the bundle's integer-exact context model: decodes on every computer
    INT8 = 4  # as EXACT with the int8 copy of that model (0.2.0): integer-exact too, about 3x faster
    INT8_PAIRED = 5  # as INT8 with each lattice level's two edge cosets in one pass (0.3.0): a third faster


INT8_MODES = (CodingMode.INT8, CodingMode.INT8_PAIRED)
"""The modes of the int8 context model (they differ only in the order of the groups)."""
CONTEXT_MODES = (CodingMode.CONTEXT, CodingMode.EXACT, *INT8_MODES)
"""The modes that code the whole map with a context model (unpacketized files only)."""


@dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the payload and the model bundle."""

    model_id: int
    codebook_size: int
    m: int
    width: int
    height: int
    mode: CodingMode = CodingMode.STATIC
    version: int = VERSION

    def validate(self) -> None:
        if not 0 <= self.model_id < 2**32:
            raise VqcFormatError(f"model id {self.model_id} does not fit in 32 bits")
        if not 2 <= self.codebook_size <= MAX_K:
            raise VqcFormatError(f"codebook size {self.codebook_size} outside 2..{MAX_K}")
        if not 1 <= self.m <= MAX_M:
            raise VqcFormatError(f"m={self.m} outside 1..{MAX_M}")
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise VqcFormatError(f"image size {self.width}x{self.height} outside 1..{MAX_SIDE}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    """Bounded reads over a bytes object (Pillow's ``_safe_read`` idea: never trust a length)."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def read_exact(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise VqcFormatError(f"truncated file: {what} needs {n} bytes at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def varint(self, what: str, max_bytes: int = 3) -> int:
        n = shift = 0
        for _ in range(max_bytes):
            b = self.read_exact(1, what)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n
        raise VqcFormatError(f"{what}: varint longer than {max_bytes} bytes")


def pack(header: Header, payload: bytes) -> bytes:
    """Header + payload + CRC-32 -> the bytes of a .vqc file."""
    header.validate()
    head = (
        MAGIC
        + struct.pack("<BIB", header.version, header.model_id, int(header.mode))
        + _varint(header.codebook_size)
        + struct.pack("<B", header.m)
        + _varint(header.width)
        + _varint(header.height)
    )
    body = head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and verify a .vqc byte string -> (header, payload). Raises ``VqcFormatError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VqcFormatError("expected bytes")
    data = bytes(data)
    if not data:
        raise VqcFormatError("empty file (0 bytes), not a .vqc file")
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise VqcFormatError("not a .vqc file (bad magic bytes)")
    if len(data) <= len(MAGIC):
        raise VqcFormatError(f"truncated file: {len(data)} bytes, not even a header")
    header = read_header(data)
    if header.version in (LAYER_VERSION, LAYER_PACKET_VERSION):
        raise VqcFormatError(f"layered file (format version {header.version}): read it with progressive.unpack")
    if len(data) < CRC_BYTES:
        raise VqcFormatError("truncated file: no checksum")
    body, crc = data[:-CRC_BYTES], struct.unpack("<I", data[-CRC_BYTES:])[0]
    if zlib.crc32(body) != crc:
        raise VqcFormatError("checksum mismatch: the file is corrupted or truncated")
    return header, body[header_size(header) :]


def mode_of(flags: int) -> CodingMode:
    """The coding mode in a header's flag byte (bits 0-2; bits 3-7 reserved, 0)."""
    if flags & ~0x07:
        raise VqcFormatError(f"reserved flag bits set (0x{flags:02x})")
    try:
        return CodingMode(flags & 0x07)
    except ValueError:
        raise VqcFormatError(f"unknown coding mode {flags & 0x07}") from None


def read_header(data: bytes) -> Header:
    """Parse only the header (for ``vqc info`` and the Pillow plugin); no checksum check."""
    r = _Reader(data, max(0, len(data) - CRC_BYTES))
    if r.read_exact(len(MAGIC), "magic") != MAGIC:
        raise VqcFormatError("not a .vqc file (bad magic bytes)")
    version, model_id, flags = struct.unpack("<BIB", r.read_exact(6, "header"))
    if version == PACKET_VERSION:
        raise VqcFormatError("packetized file (format version 2): read it with scan_packets")
    if version == LAYER_VERSION:  # the header only: the layers are read by layerfile.scan_layers
        from vqcodec import layerfile

        return layerfile.read_header(data)[0]
    if version == LAYER_PACKET_VERSION:  # a good header copy: the packets are read by layerpackets.scan
        from vqcodec import layerpackets

        return layerpackets.scan(data).header
    if version != VERSION:
        raise VqcFormatError(f"unsupported format version {version} (this reader knows {VERSION})")
    mode = mode_of(flags)
    k = r.varint("codebook size")
    m = r.read_exact(1, "m")[0]
    w = r.varint("width")
    h = r.varint("height")
    header = Header(model_id, k, m, w, h, mode, version)
    header.validate()
    return header


def header_size(header: Header) -> int:
    return 10 + len(_varint(header.codebook_size)) + len(_varint(header.width)) + len(_varint(header.height))


# ---------------------------------------------------------------------------------------------
# Format version 2: packetized files (``vqc encode --packets N``), see docs/bitstream.md.
#
#   header copy x3   each 21 bytes: magic "VQC", version 2, model id u32, flags u8, K-1 u16,
#                    m u8, width u16, height u16, packet count u8, CRC-32 of the 17 bytes before
#   packets          each: seq u8 | length u16 | payload | CRC-16/CCITT (binascii.crc_hqx) of
#                    seq+length+payload (CRC-16/CCITT-FALSE: initial value 0xFFFF)
#
# The header is fixed-size and stored three times, so a reader finds a good copy even when bit
# errors hit one or two; `vqc corrupt` models packet loss on the data packets only (the header
# stands for what a real transport delivers reliably, as a session description). Each packet is
# entropy-coded on its own, so it decodes without its neighbours.
# ---------------------------------------------------------------------------------------------

PACKET_VERSION = 2
PARITY_VERSION = 3
"""Packetized files with erasure-coded parity packets: version 2's layout, with the parity count R
in the header copies' flag bits 2-7 (docs/bitstream.md, "Parity packets")."""
MAX_PARITY = 63
V2_HEADER = struct.Struct("<3sBIBHBHHB")
V2_HEADER_BYTES = V2_HEADER.size + 4
HEADER_COPIES = 3
PACKET_HEAD = struct.Struct("<BH")
PACKET_OVERHEAD = PACKET_HEAD.size + 2
MAX_PACKETS = 255
MAX_PACKET_PAYLOAD = 65535


@dataclass(frozen=True)
class PacketScan:
    """What the reader found in a packetized file."""

    header: Header
    packets: int  # declared packet count
    payloads: dict[int, bytes]  # seq -> payload of every packet that passed its checksum
    damaged: int  # packet-shaped regions that failed their checksum
    duplicates: int
    header_copies_ok: int
    parity: int = 0  # declared parity packets R
    parity_arrived: int = 0  # parity packets that passed their checksum
    rebuilt: tuple[int, ...] = ()  # data packets rebuilt from parity (in ``payloads``)
    parity_mismatch: bool = False  # parity disagreed with the data: nothing rebuilt from it
    data_arrived: int = 0  # data packets that arrived themselves

    @property
    def lost(self) -> list[int]:
        return [s for s in range(self.packets) if s not in self.payloads]


def _v2_header_bytes(header: Header, packets: int, parity: int = 0) -> bytes:
    version = PARITY_VERSION if parity else PACKET_VERSION
    if header.mode > 3:  # two bits of a packet header; the context modes need the whole map anyway
        raise VqcUsageError(f"coding mode {header.mode.name.lower()} cannot be packetized")
    body = V2_HEADER.pack(MAGIC, version, header.model_id, int(header.mode) | parity << 2, header.codebook_size - 1,
                          header.m, header.width, header.height, packets)  # fmt: skip
    return body + struct.pack("<I", zlib.crc32(body))


def _frame(seq: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PACKET_PAYLOAD:
        raise VqcFormatError(f"packet {seq} payload of {len(payload)} bytes exceeds {MAX_PACKET_PAYLOAD}")
    head = PACKET_HEAD.pack(seq, len(payload))
    return head + payload + struct.pack("<H", binascii.crc_hqx(head + payload, 0xFFFF))


def check_parity(packets: int, parity: int) -> None:
    if not 0 <= parity <= MAX_PARITY:
        raise VqcUsageError(f"--parity {parity}: the parity packet count must be in 0..{MAX_PARITY}")
    if packets + parity > MAX_PACKETS:
        raise VqcUsageError(f"{packets} packets + {parity} parity packets exceed {MAX_PACKETS} in all")


def _parity_blocks(framed: list[bytes], parity: int) -> list[bytes]:
    """R erasure-coded blocks (zfec, Reed-Solomon over GF(2^8)) of the P framed data packets, each
    zero-padded to the longest: any P of the P + R blocks give back every framed packet."""
    import zfec

    size = max(len(f) for f in framed)
    blocks = tuple(f.ljust(size, b"\0") for f in framed)
    n = len(blocks)
    return [bytes(b) for b in zfec.Encoder(n, n + parity).encode(blocks, tuple(range(n, n + parity)))]


def pack_packets(header: Header, payloads: list[bytes], parity: int = 0) -> bytes:
    """A packetized file: three header copies, one framed packet per payload, then ``parity``
    erasure-coded parity packets (format version 3 when there are any, else version 2)."""
    header.validate()
    if not 1 <= len(payloads) <= MAX_PACKETS:
        raise VqcFormatError(f"packet count {len(payloads)} outside 1..{MAX_PACKETS}")
    check_parity(len(payloads), parity)
    framed = [_frame(seq, p) for seq, p in enumerate(payloads)]
    out = bytearray(_v2_header_bytes(header, len(payloads), parity) * HEADER_COPIES)
    out += b"".join(framed)
    for j, block in enumerate(_parity_blocks(framed, parity) if parity else []):
        out += _frame(len(payloads) + j, block)
    return bytes(out)


def _parse_v2_header(chunk: bytes) -> tuple[Header, int, int] | None:
    """(header, data packets P, parity packets R) of one intact header copy, else None."""
    if len(chunk) < V2_HEADER_BYTES:
        return None
    body, crc = chunk[: V2_HEADER.size], struct.unpack("<I", chunk[V2_HEADER.size : V2_HEADER_BYTES])[0]
    if zlib.crc32(body) != crc:
        return None
    magic, version, model_id, flags, km1, m, w, h, packets = V2_HEADER.unpack(body)
    parity = flags >> 2
    if magic != MAGIC or version not in (PACKET_VERSION, PARITY_VERSION) or packets < 1:
        return None
    if (version == PACKET_VERSION) != (parity == 0) or packets + parity > MAX_PACKETS:
        return None
    try:
        header = Header(model_id, km1 + 1, m, w, h, CodingMode(flags & 0x03), version)
        header.validate()
    except (ValueError, VqcFormatError):
        return None
    return header, packets, parity


def is_packetized(data: bytes) -> bool:
    return len(data) >= 4 and data[:3] == MAGIC and data[3] in (PACKET_VERSION, PARITY_VERSION)


def _rebuild(payloads: dict[int, bytes], parity_blocks: dict[int, bytes], packets: int,
             parity: int, offset: int = 0) -> tuple[list[int], bool]:  # fmt: skip
    """Rebuild lost data packets from parity when at least P of the P + R packets arrived; each
    rebuilt packet must carry its own sequence number and pass its own CRC-16, so parity that
    disagrees with the data rebuilds nothing. Returns (rebuilt seqs, parity disagreed).

    Keys of ``payloads`` (0 .. P-1) and ``parity_blocks`` (P .. P+R-1) are local to one group of
    packets whose framed sequence numbers start at ``offset`` (a layer of a layered file)."""
    import zfec

    missing = [s for s in range(packets) if s not in payloads]
    sizes = {len(b) for b in parity_blocks.values()}
    if not missing or len(payloads) + len(parity_blocks) < packets:
        return [], False
    framed = {s: _frame(s + offset, p) for s, p in payloads.items()}
    if len(sizes) != 1 or max(map(len, framed.values()), default=0) > min(sizes):
        return [], True  # parity packets of different sizes, or shorter than a data packet
    size = sizes.pop()
    nums = sorted(framed)[:packets] + sorted(parity_blocks)[: packets - len(framed)]
    blocks = tuple(framed[n].ljust(size, b"\0") if n < packets else parity_blocks[n] for n in nums)
    try:
        out = zfec.Decoder(packets, packets + parity).decode(blocks, tuple(nums))
    except Exception:  # noqa: BLE001 - zfec raises plain errors for inconsistent input
        return [], True
    rebuilt, bad = [], False
    for s in missing:
        block = bytes(out[s])
        seq, n = PACKET_HEAD.unpack_from(block, 0)
        stop = PACKET_HEAD.size + n
        if (
            seq != s + offset
            or stop + 2 > len(block)
            or binascii.crc_hqx(block[:stop], 0xFFFF) != struct.unpack_from("<H", block, stop)[0]
        ):
            bad = True
            continue
        payloads[s] = block[PACKET_HEAD.size : stop]
        rebuilt.append(s)
    return rebuilt, bad


def scan_packets(data: bytes) -> PacketScan:
    """Parse a version-2 file whatever happened to it: lost, damaged, duplicated or reordered packets.

    Raises ``VqcFormatError`` only when no header copy survives (nothing can be decoded then).
    """
    data = bytes(data)
    found = [_parse_v2_header(data[i * V2_HEADER_BYTES : (i + 1) * V2_HEADER_BYTES]) for i in range(HEADER_COPIES)]
    good = [f for f in found if f is not None]
    if not good:
        if len(data) < 4 or data[:3] != MAGIC:
            raise VqcFormatError("not a .vqc file (bad magic bytes)")
        raise VqcFormatError("packetized file: every header copy is damaged or missing")
    header, packets, parity = good[0]
    frames, damaged, duplicates = scan_frames(data, HEADER_COPIES * V2_HEADER_BYTES, packets + parity)
    payloads = {s: p for s, p in frames.items() if s < packets}
    parity_blocks = {s: p for s, p in frames.items() if s >= packets}
    arrived = len(payloads)
    rebuilt, mismatch = _rebuild(payloads, parity_blocks, packets, parity) if parity_blocks else ([], False)
    return PacketScan(header, packets, payloads, damaged, duplicates, len(good), parity, len(parity_blocks),
                      tuple(rebuilt), mismatch, arrived)  # fmt: skip


def scan_frames(data: bytes, pos: int, total: int) -> tuple[dict[int, bytes], int, int]:
    """Every framed packet with a sequence number below ``total`` that passes its CRC-16, from
    ``pos`` on: (seq -> payload, damaged regions, duplicates). A region that is not a valid packet
    counts once as damaged; the scan then resynchronises byte by byte."""
    frames: dict[int, bytes] = {}
    damaged = duplicates = 0
    end = len(data)
    while pos + PACKET_OVERHEAD <= end:
        seq, n = PACKET_HEAD.unpack_from(data, pos)
        stop = pos + PACKET_HEAD.size + n
        if seq < total and stop + 2 <= end:
            crc = struct.unpack_from("<H", data, stop)[0]
            if binascii.crc_hqx(data[pos:stop], 0xFFFF) == crc:
                if seq in frames:
                    duplicates += 1
                else:
                    frames[seq] = data[pos + PACKET_HEAD.size : stop]
                pos = stop + 2
                continue
        damaged += 1
        pos += 1
        while pos + PACKET_OVERHEAD <= end and not _valid_packet_at(data, pos, total):
            pos += 1
    return frames, damaged, duplicates


def _valid_packet_at(data: bytes, pos: int, packets: int) -> bool:
    seq, n = PACKET_HEAD.unpack_from(data, pos)
    stop = pos + PACKET_HEAD.size + n
    if seq >= packets or stop + 2 > len(data):
        return False
    return binascii.crc_hqx(data[pos:stop], 0xFFFF) == struct.unpack_from("<H", data, stop)[0]


def packet_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the framed packets of an intact packetized file (for loss simulation)."""
    scan = scan_packets(data)
    if scan.damaged or scan.data_arrived != scan.packets or scan.parity_arrived != scan.parity:
        raise VqcFormatError("file is already damaged: simulate loss on an intact file")
    spans, pos = [], HEADER_COPIES * V2_HEADER_BYTES
    while pos < len(data):
        _, n = PACKET_HEAD.unpack_from(data, pos)
        spans.append((pos, pos + PACKET_OVERHEAD + n))
        pos += PACKET_OVERHEAD + n
    return spans
