"""Lossless coding of index maps: constriction's range coder with a static frequency model.

The model is a per-K table of integer counts measured on training images and stored in the
bundle (CompressAI's ``update()`` idea: quantise once, ship the integers). Both sides turn the
same integers into the same float64 probabilities and constriction quantises them with
``perfect=False`` deterministically, so encoder and decoder see bit-identical models. Every index
keeps a count of at least 1, so any index map is encodable.

The coder emits 32-bit words (written little-endian); up to three trailing zero bytes of the
last word are dropped and restored on decoding (a few bytes matter at ~1 KB per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np

from vqcodec.errors import VqcFormatError

_Categorical = constriction.stream.model.Categorical
_RangeEncoder = constriction.stream.queue.RangeEncoder
_RangeDecoder = constriction.stream.queue.RangeDecoder


@dataclass(frozen=True)
class FrequencyTable:
    """Integer symbol counts (K,), all >= 1; ``probabilities`` is what both coders use."""

    counts: np.ndarray

    def __post_init__(self) -> None:
        c = np.asarray(self.counts)
        if c.ndim != 1 or c.size < 2 or not np.issubdtype(c.dtype, np.integer) or (c < 1).any():
            raise ValueError("counts must be a 1-D integer array of >= 2 entries, all >= 1")
        object.__setattr__(self, "counts", c.astype(np.int64))

    @property
    def size(self) -> int:
        return int(self.counts.size)

    @classmethod
    def from_indices(cls, indices: np.ndarray, size: int, total: int = 1 << 20) -> FrequencyTable:
        """Counts of observed indices, rescaled to about ``total`` with a floor of 1."""
        hist = np.bincount(np.asarray(indices).ravel(), minlength=size).astype(np.float64)
        if hist.size > size:
            raise ValueError(f"index {hist.size - 1} outside a codebook of {size}")
        scaled = np.floor(hist / max(hist.sum(), 1.0) * total)
        return cls(np.maximum(scaled, 1).astype(np.int64))

    @classmethod
    def uniform(cls, size: int) -> FrequencyTable:
        return cls(np.ones(size, dtype=np.int64))

    def probabilities(self) -> np.ndarray:
        return self.counts.astype(np.float64) / float(self.counts.sum())

    def model(self):
        return _Categorical(self.probabilities(), perfect=False)

    def entropy_bits(self) -> float:
        """Bits per index this table's ideal code spends on data distributed like it."""
        p = self.probabilities()
        return float(-(p * np.log2(p)).sum())

    def cost_bits(self, indices: np.ndarray) -> float:
        """Ideal code length (bits) of ``indices`` under this table."""
        p = self.probabilities()
        return float(-np.log2(p[np.asarray(indices).ravel()]).sum())


def _words_to_bytes(words: np.ndarray) -> bytes:
    raw = words.astype("<u4").tobytes()
    trimmed = raw.rstrip(b"\x00")
    return raw[: max(len(trimmed), len(raw) - 3)]


def _bytes_to_words(payload: bytes) -> np.ndarray:
    pad = (-len(payload)) % 4
    return np.frombuffer(payload + b"\x00" * pad, dtype="<u4").astype(np.uint32)


def encode_static(indices: np.ndarray, table: FrequencyTable) -> bytes:
    """Range-code a flat array of indices (each in [0, K)) with a static table."""
    sym = np.ascontiguousarray(np.asarray(indices).ravel(), dtype=np.int32)
    if sym.size and (sym.min() < 0 or sym.max() >= table.size):
        raise ValueError(f"indices must lie in [0, {table.size})")
    enc = _RangeEncoder()
    if sym.size:
        enc.encode(sym, table.model())
    return _words_to_bytes(enc.get_compressed())


def decode_static(payload: bytes, table: FrequencyTable, count: int) -> np.ndarray:
    """Inverse of ``encode_static``; ``count`` symbols (from the header). Raises VqcFormatError."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    dec = _RangeDecoder(_bytes_to_words(payload))
    try:
        out = dec.decode(table.model(), count)
    except (AssertionError, ValueError, RuntimeError) as e:
        raise VqcFormatError(f"entropy decoding failed: {e}") from None
    return np.asarray(out, dtype=np.int64)


def encode_planes(indices: np.ndarray, tables: list[FrequencyTable]) -> bytes:
    """Range-code an (m, n) array of indices, plane j with ``tables[j]`` (one coder, plane after plane)."""
    planes = np.asarray(indices).reshape(len(tables), -1)
    enc = _RangeEncoder()
    for sym, table in zip(planes, tables, strict=True):
        sym = np.ascontiguousarray(sym, dtype=np.int32)
        if sym.size and (sym.min() < 0 or sym.max() >= table.size):
            raise ValueError(f"indices must lie in [0, {table.size})")
        if sym.size:
            enc.encode(sym, table.model())
    return _words_to_bytes(enc.get_compressed())


def decode_planes(payload: bytes, tables: list[FrequencyTable], count: int) -> np.ndarray:
    """Inverse of ``encode_planes``: ``count`` indices in all (a multiple of m), flat in (m, n) order."""
    m = len(tables)
    if count % m:
        raise VqcFormatError(f"{count} indices do not split into {m} planes")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    dec = _RangeDecoder(_bytes_to_words(payload))
    try:
        out = [np.asarray(dec.decode(t.model(), count // m), dtype=np.int64) for t in tables]
    except (AssertionError, ValueError, RuntimeError) as e:
        raise VqcFormatError(f"entropy decoding failed: {e}") from None
    return np.concatenate(out)


def raw_bits(size: int) -> int:
    return max(1, math.ceil(math.log2(size)))


def encode_raw(indices: np.ndarray, size: int) -> bytes:
    """Fixed-width ceil(log2 K) bits per index, MSB first: the paper's uncoded baseline."""
    nb = raw_bits(size)
    idx = np.asarray(indices, dtype=np.int64).ravel()
    bits = ((idx[:, None] >> np.arange(nb - 1, -1, -1)) & 1).astype(np.uint8)
    return np.packbits(bits.ravel()).tobytes()


def decode_raw(payload: bytes, size: int, count: int) -> np.ndarray:
    nb = raw_bits(size)
    need = math.ceil(count * nb / 8)
    if len(payload) != need:
        raise VqcFormatError(f"raw payload is {len(payload)} bytes, expected {need}")
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: count * nb].reshape(count, nb)
    idx = (bits.astype(np.int64) << np.arange(nb - 1, -1, -1)).sum(axis=1)
    if count and idx.max() >= size:
        raise VqcFormatError(f"raw payload holds index {idx.max()} >= K={size}")
    return idx
