"""The .vqc container, format version 1: the only module that knows the byte layout.

Layout (all integers little-endian; ``varint`` is unsigned LEB128, at most 3 bytes here)::

    offset  size    field
    0       3       magic  b"VQC"
    3       1       version (1)
    4       4       model id (uint32, from the bundle's manifest)
    8       1       flags: bits 0-1 coding mode (0 static range coding, 1 context model,
                    2 raw fixed-width); bits 2-7 reserved, must be 0
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

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from vqcodec.errors import VqcFormatError

MAGIC = b"VQC"
VERSION = 1
MAX_SIDE = 65535
MAX_K = 65536
MAX_M = 16
CRC_BYTES = 4


class CodingMode(IntEnum):
    STATIC = 0  # range coding with the bundle's per-K index frequencies
    CONTEXT = 1  # range coding with a learned context model (reserved)
    RAW = 2  # fixed-width ceil(log2 K) bits per index


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
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise VqcFormatError("not a .vqc file (bad magic bytes)")
    header = read_header(data)
    if len(data) < CRC_BYTES:
        raise VqcFormatError("truncated file: no checksum")
    body, crc = data[:-CRC_BYTES], struct.unpack("<I", data[-CRC_BYTES:])[0]
    if zlib.crc32(body) != crc:
        raise VqcFormatError("checksum mismatch: the file is corrupted or truncated")
    return header, body[header_size(header) :]


def read_header(data: bytes) -> Header:
    """Parse only the header (for ``vqc info`` and the Pillow plugin); no checksum check."""
    r = _Reader(data, max(0, len(data) - CRC_BYTES))
    if r.read_exact(len(MAGIC), "magic") != MAGIC:
        raise VqcFormatError("not a .vqc file (bad magic bytes)")
    version, model_id, flags = struct.unpack("<BIB", r.read_exact(6, "header"))
    if version != VERSION:
        raise VqcFormatError(f"unsupported format version {version} (this reader knows {VERSION})")
    if flags & ~0x03:
        raise VqcFormatError(f"reserved flag bits set (0x{flags:02x})")
    try:
        mode = CodingMode(flags & 0x03)
    except ValueError:
        raise VqcFormatError(f"unknown coding mode {flags & 0x03}") from None
    k = r.varint("codebook size")
    m = r.read_exact(1, "m")[0]
    w = r.varint("width")
    h = r.varint("height")
    header = Header(model_id, k, m, w, h, mode, version)
    header.validate()
    return header


def header_size(header: Header) -> int:
    return 10 + len(_varint(header.codebook_size)) + len(_varint(header.width)) + len(_varint(header.height))
