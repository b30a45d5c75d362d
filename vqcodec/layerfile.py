"""The layered .vqc layout, format version 4 (``vqc encode --layers``): the byte layout of
progressive files, beside ``container`` (versions 1-3). ``docs/bitstream.md`` is the human spec.

Layout (little-endian; ``varint`` is unsigned LEB128)::

    offset  size    field
    0       3       magic  b"VQC"
    3       1       version (4)
    4       4       model id (uint32)
    8       1       flags: bits 0-2 coding mode of every layer (0 static, 3 int16 exact, 4 int8, 5 int8-paired);
                    bits 3-7 reserved, 0
    9       1       L, layers declared (2 .. 8)
    .       varint  K_1 < K_2 < ... < K_L, the codebook size of each layer (2 .. 65536)
    .       1       m, indices per position (1)
    .       varint  image width, image height (1 .. 65535)
    .       2       layer-set tag (uint16: the bundle's nested books, ``layers.LayerSet.tag``)
    then, for each layer present, in order:
    .       varint  n, the layer's payload bytes (at most 4 bytes of varint)
    .       n       payload (layer 1: an ordinary single-layer payload of K_1; later layers: a
                    refinement given the layer below, ``layers.encode_refinement``)
    .       4       CRC-32 (zlib) of every byte of the file before it

Each layer's CRC covers the header and every layer before it, so a layer is only ever read on
top of the layers it was coded against. Any prefix that ends at a layer boundary is a valid file
(``vqc trim`` writes exactly such prefixes); a file cut anywhere else reads as its complete
layers; a file whose base layer is incomplete or damaged is an error. Every read is bounded.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from vqcodec.container import LAYER_VERSION, MAGIC, MAX_K, CodingMode, Header, _Reader, _varint, mode_of
from vqcodec.errors import VqcFormatError, VqcUsageError

MAX_LAYERS = 8
LAYER_MODES = (CodingMode.STATIC, CodingMode.EXACT, CodingMode.INT8, CodingMode.INT8_PAIRED)
MAX_LENGTH_BYTES = 4


@dataclass(frozen=True)
class LayerScan:
    """What the reader found in a layered file: the declared chain and the complete layers."""

    header: Header  # codebook_size: the top declared K
    sizes: tuple[int, ...]  # K of every declared layer
    tag: int
    payloads: tuple[bytes, ...]  # the complete, verified layers, in order
    ends: tuple[int, ...]  # the file offset just after each complete layer's CRC
    problem: str = ""  # why the next layer is not there ("" when every declared layer is)

    @property
    def complete(self) -> int:
        return len(self.payloads)

    @property
    def codebook_size(self) -> int:
        """K of the deepest complete layer: what a decode of this file draws."""
        return self.sizes[self.complete - 1]


def is_layered(data: bytes) -> bool:
    return len(data) >= 4 and data[:3] == MAGIC and data[3] == LAYER_VERSION


def header_bytes(header: Header, sizes: tuple[int, ...], tag: int) -> bytes:
    if header.mode not in LAYER_MODES:
        raise VqcUsageError(f"layered files are coded with int8-paired, int8, exact or static, not {header.mode.name.lower()}")
    if not 2 <= len(sizes) <= MAX_LAYERS or list(sizes) != sorted(set(sizes)) or sizes[0] < 2 or sizes[-1] > MAX_K:
        raise VqcUsageError(f"layers need 2..{MAX_LAYERS} increasing codebook sizes in 2..{MAX_K}, not {sizes}")
    Header(header.model_id, sizes[-1], header.m, header.width, header.height, header.mode).validate()
    return (MAGIC + struct.pack("<BIBB", LAYER_VERSION, header.model_id, int(header.mode), len(sizes))
            + b"".join(_varint(k) for k in sizes) + struct.pack("<B", header.m) + _varint(header.width)
            + _varint(header.height) + struct.pack("<H", tag))  # fmt: skip


def pack_layers(header: Header, sizes: tuple[int, ...], tag: int, payloads: list[bytes]) -> bytes:
    """The header and the given layers (the first ``len(payloads)`` of ``sizes``), each framed."""
    if not 1 <= len(payloads) <= len(sizes):
        raise VqcUsageError(f"{len(payloads)} layer payloads for {len(sizes)} declared layers")
    out = bytearray(header_bytes(header, sizes, tag))
    for p in payloads:
        if len(p) >= 1 << (7 * MAX_LENGTH_BYTES):
            raise VqcFormatError(f"layer payload of {len(p)} bytes is too large")
        out += _varint(len(p)) + p
        out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def _read_header(data: bytes) -> tuple[Header, tuple[int, ...], int, int]:
    """(header, sizes, tag, offset of the first layer). Raises ``VqcFormatError``."""
    r = _Reader(data, len(data))
    if r.read_exact(len(MAGIC), "magic") != MAGIC:
        raise VqcFormatError("not a .vqc file (bad magic bytes)")
    version, model_id, flags, n = struct.unpack("<BIBB", r.read_exact(7, "layered header"))
    if version != LAYER_VERSION:
        raise VqcFormatError(f"not a layered file (format version {version})")
    mode = mode_of(flags)
    if mode not in LAYER_MODES:
        raise VqcFormatError(f"coding mode {mode.name.lower()} is not used in layered files")
    if not 2 <= n <= MAX_LAYERS:
        raise VqcFormatError(f"{n} layers declared; a layered file has 2..{MAX_LAYERS}")
    sizes = tuple(r.varint(f"codebook size of layer {i + 1}") for i in range(n))
    if list(sizes) != sorted(set(sizes)) or sizes[0] < 2 or sizes[-1] > MAX_K:
        raise VqcFormatError(f"layer codebook sizes {sizes} are not increasing sizes in 2..{MAX_K}")
    m = r.read_exact(1, "m")[0]
    w = r.varint("width")
    h = r.varint("height")
    tag = struct.unpack("<H", r.read_exact(2, "layer-set tag"))[0]
    header = Header(model_id, sizes[-1], m, w, h, mode, LAYER_VERSION)
    header.validate()
    return header, sizes, tag, r.pos


def read_header(data: bytes) -> tuple[Header, tuple[int, ...], int]:
    """(header, sizes, tag) of a layered file, without checking any layer (``vqc info``, Pillow)."""
    header, sizes, tag, _ = _read_header(bytes(data))
    return header, sizes, tag


def scan_layers(data: bytes) -> LayerScan:
    """Parse a layered file, however it was cut: every complete layer whose CRC holds, up to the
    first one that is missing, cut or damaged. Raises ``VqcFormatError`` when not even the base
    layer is complete, or when bytes follow the last declared layer."""
    data = bytes(data)
    header, sizes, tag, pos = _read_header(data)
    payloads: list[bytes] = []
    ends: list[int] = []
    problem = ""
    for i in range(len(sizes)):
        if pos == len(data):
            problem = f"the file ends after layer {i}"
            break
        r = _Reader(data, len(data))
        r.pos = pos
        try:
            n = r.varint(f"length of layer {i + 1}", MAX_LENGTH_BYTES)
            payload = r.read_exact(n, f"layer {i + 1}")
            crc = struct.unpack("<I", r.read_exact(4, f"checksum of layer {i + 1}"))[0]
        except VqcFormatError:
            problem = f"layer {i + 1} is incomplete (the file was cut inside it)"
            break
        if zlib.crc32(data[: r.pos - 4]) != crc:
            problem = f"layer {i + 1} failed its checksum"
            break
        payloads.append(payload)
        pos = r.pos
        ends.append(pos)
    if not payloads:
        raise VqcFormatError(f"layered file: nothing to decode, {problem.replace('layer 1', 'the base layer')}")
    if len(payloads) == len(sizes) and pos != len(data):
        raise VqcFormatError(f"layered file: {len(data) - pos} bytes after the last layer")
    return LayerScan(header, sizes, tag, tuple(payloads), tuple(ends), problem)


def trim(data: bytes, max_bytes: int) -> bytes:
    """The longest prefix of whole, verified layers within ``max_bytes``: what the encoder writes
    for that budget. Raises ``VqcFormatError`` for a file that is not layered or has no base
    layer, and ``VqcBudgetError`` when even the base layer is larger."""
    from vqcodec.errors import VqcBudgetError

    if not is_layered(bytes(data[:4])):
        raise VqcFormatError("not a layered file (vqc encode --layers makes one): nothing to trim")
    scan = scan_layers(data)
    fits = [e for e in scan.ends if e <= max_bytes]
    if not fits:
        raise VqcBudgetError(max_bytes, scan.ends[0], f"the base layer alone needs {scan.ends[0]} bytes, "
                             f"more than {max_bytes}")  # fmt: skip
    return bytes(data[: fits[-1]])
