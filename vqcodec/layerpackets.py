"""Packetized layered files, format version 5 (``vqc encode --layers 8,64,1024 --packets N
--parity 4,2,0``): every layer packetized on its own, with its own parity. ``docs/bitstream.md``
is the human spec.

Layout (little-endian)::

    header copy x3   each 22 + 3 L bytes: magic "VQC", version 5, model id u32, flags u8 (bits 0-2
                     the coding mode: 0, static), L u8 (2 .. 8), m u8, width u16, height u16,
                     layer-set tag u16, N u8 (data packets per layer), then per layer K_l - 1 u16
                     and R_l u8 (its parity packets), then CRC-32 of the copy's bytes before it
    packets          layer by layer: layer l's N data packets, then its R_l parity packets, framed
                     as in version 2 (seq u8 | length u16 | payload | CRC-16), the sequence numbers
                     counting on across layers (layer l starts at the sum of N + R_j over j < l)

Data packet p of every layer holds the same positions (``interleave.assignment`` of N packets), so
a refinement packet is decodable exactly when the packet of the layer below with its positions is
known (arrived or rebuilt from that layer's parity): a lost refinement packet costs only that
layer's detail at its positions. Parity packets are layer l's zfec blocks over its framed data
packets, as in version 3.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from vqcodec.container import (
    HEADER_COPIES,
    LAYER_PACKET_VERSION,
    MAGIC,
    MAX_PACKETS,
    MAX_PARITY,
    PACKET_OVERHEAD,
    CodingMode,
    Header,
    PacketScan,
    _frame,
    _parity_blocks,
    _rebuild,
    scan_frames,
)
from vqcodec.errors import VqcFormatError, VqcUsageError

MAX_LAYERS = 8
_FIXED = struct.Struct("<3sBIBBBHHHB")


def copy_bytes(layers: int) -> int:
    """Bytes of one header copy for ``layers`` layers."""
    return _FIXED.size + 3 * layers + 4


@dataclass(frozen=True)
class LayerPacketScan:
    """What the reader found: the declared layers and, per layer, its packets (a ``PacketScan``
    whose ``payloads`` are keyed by the packet's number within the layer, 0 .. N-1)."""

    header: Header
    sizes: tuple[int, ...]
    tag: int
    packets: int  # data packets per layer
    layers: tuple[PacketScan, ...]
    damaged: int
    duplicates: int
    header_copies_ok: int


def is_layer_packets(data: bytes) -> bool:
    return len(data) >= 4 and data[:3] == MAGIC and data[3] == LAYER_PACKET_VERSION


def check(sizes: tuple[int, ...], packets: int, parity: tuple[int, ...]) -> None:
    if len(parity) != len(sizes):
        raise VqcUsageError(f"--parity takes one value per layer ({len(sizes)} here) or one for all, not {len(parity)}")
    if any(not 0 <= r <= MAX_PARITY for r in parity):
        raise VqcUsageError(f"--parity {','.join(map(str, parity))}: each layer's parity count must be in 0..{MAX_PARITY}")
    if len(sizes) * packets + sum(parity) > MAX_PACKETS:
        raise VqcUsageError(f"{len(sizes)} layers x {packets} packets + {sum(parity)} parity packets exceed "
                            f"{MAX_PACKETS} in all")  # fmt: skip


def _header_copy(header: Header, sizes: tuple[int, ...], tag: int, packets: int, parity: tuple[int, ...]) -> bytes:
    body = _FIXED.pack(MAGIC, LAYER_PACKET_VERSION, header.model_id, int(header.mode), len(sizes), header.m,
                       header.width, header.height, tag, packets)  # fmt: skip
    body += b"".join(struct.pack("<HB", k - 1, r) for k, r in zip(sizes, parity, strict=True))
    return body + struct.pack("<I", zlib.crc32(body))


def pack(header: Header, sizes: tuple[int, ...], tag: int, payloads: list[list[bytes]], parity: tuple[int, ...]) -> bytes:
    """Three header copies, then each layer's framed data packets and parity packets."""
    if header.mode != CodingMode.STATIC:
        raise VqcUsageError("packetized layered files are static-coded: each packet decodes on its own")
    packets = len(payloads[0])
    if len(payloads) != len(sizes) or any(len(p) != packets for p in payloads) or not 1 <= packets:
        raise VqcUsageError("a packetized layered file needs the same number of packets in every layer")
    check(sizes, packets, parity)
    out = bytearray(_header_copy(header, sizes, tag, packets, parity) * HEADER_COPIES)
    seq = 0
    for layer, r in zip(payloads, parity, strict=True):
        framed = [_frame(seq + p, payload) for p, payload in enumerate(layer)]
        out += b"".join(framed)
        for j, block in enumerate(_parity_blocks(framed, r) if r else []):
            out += _frame(seq + packets + j, block)
        seq += packets + r
    return bytes(out)


def _parse_copy(chunk: bytes, layers: int):
    """(header, sizes, tag, packets, parity) of one intact header copy for ``layers`` layers, else None."""
    size = copy_bytes(layers)
    if len(chunk) < size or zlib.crc32(chunk[: size - 4]) != struct.unpack("<I", chunk[size - 4 : size])[0]:
        return None
    magic, version, model_id, flags, n, m, w, h, tag, packets = _FIXED.unpack_from(chunk, 0)
    if magic != MAGIC or version != LAYER_PACKET_VERSION or n != layers or packets < 1 or flags != 0:
        return None
    fields = [struct.unpack_from("<HB", chunk, _FIXED.size + 3 * i) for i in range(n)]
    sizes = tuple(k + 1 for k, _ in fields)
    parity = tuple(r for _, r in fields)
    if list(sizes) != sorted(set(sizes)) or sizes[0] < 2:
        return None
    try:
        check(sizes, packets, parity)
        header = Header(model_id, sizes[-1], m, w, h, CodingMode.STATIC, LAYER_PACKET_VERSION)
        header.validate()
    except (VqcUsageError, VqcFormatError):
        return None
    return header, sizes, tag, packets, parity


def _copies(data: bytes) -> list[tuple]:
    """Every intact header copy: the copy size depends on L, so each L is tried at each place."""
    found = []
    for i in range(HEADER_COPIES):
        for layers in range(2, MAX_LAYERS + 1):
            size = copy_bytes(layers)
            got = _parse_copy(data[i * size : (i + 1) * size], layers)
            if got is not None:
                found.append(got)
                break
    return found


def scan(data: bytes) -> LayerPacketScan:
    """Parse a version-5 file whatever happened to its packets; per layer, rebuild what parity can.

    Raises ``VqcFormatError`` only when no header copy survives."""
    data = bytes(data)
    good = _copies(data)
    if not good:
        if len(data) < 4 or data[:3] != MAGIC:
            raise VqcFormatError("not a .vqc file (bad magic bytes)")
        raise VqcFormatError("packetized layered file: every header copy is damaged or missing")
    header, sizes, tag, packets, parity = good[0]
    total = len(sizes) * packets + sum(parity)
    frames, damaged, duplicates = scan_frames(data, HEADER_COPIES * copy_bytes(len(sizes)), total)
    out, start = [], 0
    for r in parity:
        data_p = {s - start: p for s, p in frames.items() if start <= s < start + packets}
        parity_p = {s - start: p for s, p in frames.items() if start + packets <= s < start + packets + r}
        arrived = len(data_p)
        rebuilt, mismatch = _rebuild(data_p, parity_p, packets, r, offset=start) if parity_p else ([], False)
        out.append(PacketScan(header, packets, data_p, 0, 0, len(good), r, len(parity_p), tuple(rebuilt), mismatch,
                              arrived))  # fmt: skip
        start += packets + r
    return LayerPacketScan(header, sizes, tag, packets, tuple(out), damaged, duplicates, len(good))


def spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the framed packets of an intact file (for ``vqc corrupt``)."""
    s = scan(data)
    if s.damaged or any(p.data_arrived != p.packets or p.parity_arrived != p.parity for p in s.layers):
        raise VqcFormatError("file is already damaged: simulate loss on an intact file")
    out, pos = [], HEADER_COPIES * copy_bytes(len(s.sizes))
    while pos < len(data):
        n = struct.unpack_from("<H", data, pos + 1)[0]
        out.append((pos, pos + PACKET_OVERHEAD + n))
        pos += PACKET_OVERHEAD + n
    return out
