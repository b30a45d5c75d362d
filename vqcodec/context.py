"""Context-model entropy coding of index maps with the bundle's index-map transformer.

The map is coded in lattice groups, coarse to fine, each group with all earlier groups visible:
with ``levels=1`` the four cosets of the 2x2 lattice ((0,0), then (1,1), (0,1), (1,0)); with
``levels=2`` the (0,0) coset is itself coded as four cosets of the 4x4 lattice first, so only
1/16 of the indices (not 1/4) is coded with no context: seven groups. One transformer pass per
group, whatever the image size, so decoding stays parallel and fast. With ``paired`` (coding mode
``int8-paired``, 0.3.0) the two edge cosets of each level, (0, half) and (half, 0), are one group:
five groups at ``levels=2``, two full passes fewer (a third of the time) for +0.2-0.3 % bits on
held-out photos (the model was trained to predict every masked position, not just the next group's).

Three models give the frequencies:
- the **int8** one (``nets/int8_transformer.Int8Transformer``, coding mode ``int8``, the default
  from 0.2.0 where the bundle ships it): the same trained network quantised to int8 weights and
  activations with int32 sums, integer-exact like ``exact`` and about three times faster;
- the **integer-exact** int16 one (``nets/int_transformer.IntTransformer``, coding mode ``exact``, the
  default of 0.1): every number from the index map to the frequencies is an integer computed exactly,
  so a file decodes to the same index map on any CPU instruction set, thread count, BLAS build or
  GPU; it runs on the caller's threads and device;
- the **float** one (``IndexTransformer``, mode ``context``, files made before the exact model):
  the softmax is quantized to ``round(p * 2^PRECISION)`` in float64 and the transformer runs
  single-threaded, but its float32 logits can still differ in their last bits on another CPU
  (measured: AVX-512 against AVX2, 54 of 90 decodes failed), so such a file may only decode where
  it was made. Kept so that those files still decode where they did.

A CRC-16 of the index map travels with the payload, so a mismatch is reported as an error, never
drawn as a wrong picture. A 16-bit tag of the model's weights (from its sha256) comes first, so a
file coded with another version of the context model is refused before any decoding.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import constriction
import numpy as np
import torch

from vqcodec.errors import VqcFormatError
from vqcodec.nets.int_transformer import IntTransformer

PRECISION = 16
CHUNK = 8192
"""Positions whose probabilities are range-coded per call (a queue coder: chunking does not
change the bitstream)."""
_Categorical = constriction.stream.model.Categorical


@contextmanager
def deterministic_threads(n: int = 1):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def has_int8(bundle) -> bool:
    """Whether ``bundle`` ships the int8 context model (``Bundle.has_int8``)."""
    return bundle.has_int8()


def int8_model(bundle):
    """The bundle's ``Int8Transformer`` (``Bundle.int8_transformer``), or None if not shipped."""
    return bundle.int8_transformer()


def int8_tag(bundle) -> int:
    """16 bits of the int8 context model's sha256 (as ``exact_tag``, for coding mode int8)."""
    from vqcodec import zoo

    return int(bundle.manifest["files"][zoo.INT8][:4], 16)


def lattice_order(levels: int) -> list[tuple[int, int, int]]:
    """(stride, row offset, column offset) of each group, in coding order."""
    order = []
    for lv in range(levels, 0, -1):
        s, half = 2**lv, 2 ** (lv - 1)
        if lv == levels:
            order.append((s, 0, 0))
        order += [(s, half, half), (s, 0, half), (s, half, 0)]
    return order


def groups(h: int, w: int, levels: int = 1) -> np.ndarray:
    """(h, w) group number of every position, 0 = coded first."""
    r, c = np.mgrid[0:h, 0:w]
    g = np.full((h, w), -1, dtype=np.int64)
    for i, (s, dr, dc) in enumerate(lattice_order(levels)):
        g[(g < 0) & (r % s == dr) & (c % s == dc)] = i
    return g


def _frequencies(logits: torch.Tensor) -> np.ndarray:
    """(N, K) logits -> (N, K) integer frequencies >= 1, deterministic given the logits."""
    p = torch.softmax(logits.double(), dim=-1).numpy()
    return np.maximum(np.rint(p * (1 << PRECISION)), 1).astype(np.int64)


def _group_probs(net, idx: torch.Tensor, visible: torch.Tensor, sel: np.ndarray, k: int) -> Iterator[np.ndarray]:
    """(n, K) coding probabilities of the positions ``sel``, from fixed-point integer frequencies,
    in raster order, a few thousand positions at a time: the logits of a big map (a 50 MP photo
    at K = 1024: 800 MB) never exist all at once. One band for any map of up to 256 tiles."""
    if isinstance(net, IntTransformer):  # exact: any thread count, any device
        for f in group_frequencies(net, idx, visible, sel, k):
            f = f.astype(np.float64)
            yield f / f.sum(axis=1, keepdims=True)
        return
    h, w = idx.shape
    for r0, r1 in net.bands(h, w):
        rows = torch.from_numpy(sel[r0:r1])
        if not bool(rows.any()):
            continue
        with deterministic_threads(1), torch.inference_mode():
            logits = net.tiled(idx, ~visible, k, rows=(r0, r1))[rows]
        for part in logits.split(CHUNK):
            freq = _frequencies(part)
            yield freq / freq.sum(axis=1, keepdims=True)


def group_frequencies(net: IntTransformer, idx: torch.Tensor, visible: torch.Tensor, sel: np.ndarray,
                      k: int) -> Iterator[np.ndarray]:  # fmt: skip
    """(n, K) int64 frequencies (each >= 1) of the positions ``sel`` from an integer-exact model, in
    raster order and chunks of at most ``CHUNK`` positions: the same integers on every computer."""
    h, w = idx.shape
    for r0, r1 in net.bands(h, w):
        if not bool(sel[r0:r1].any()):
            continue
        with torch.inference_mode():
            freq = net.frequencies(net.coding_logits(idx, ~visible, k, torch.from_numpy(sel), (r0, r1))).cpu()
        for part in freq.split(CHUNK):
            yield part.numpy().astype(np.int64)


def schedule(levels: int, paired: bool = False) -> list[tuple[int, ...]]:
    """The lattice groups (numbers of ``groups``) coded together in each pass, in coding order:
    one per pass, or with ``paired`` each level's two edge cosets, (0, half) and (half, 0), in one."""
    if not paired:
        return [(g,) for g in range(3 * levels + 1)]
    out: list[tuple[int, ...]] = [(0,)]
    for lv in range(levels):
        out += [(3 * lv + 1,), (3 * lv + 2, 3 * lv + 3)]
    return out


def groups_in_order(h: int, w: int, levels: int, paired: bool = False) -> Iterator[np.ndarray]:
    """The (h, w) boolean selection of each coding group, in coding order (empty ones skipped)."""
    g = groups(h, w, levels)
    for grp in schedule(levels, paired):
        sel = np.isin(g, grp)
        if sel.any():
            yield sel


_MEMO: dict | None = None
"""Coding probabilities of whole maps, while ``remembering`` is active: ``(key) -> [(sel, probs)]``."""
MEMO_BYTES = 256 << 20
"""Most bytes of probabilities ``remembering`` keeps: a 768x512 map at K=1024 is 12.6 MB; a
24 MP one (770 MB) is recomputed instead of kept."""


@contextmanager
def remembering() -> Iterator[None]:
    """Keep each map's coding probabilities while active, so a map that is both priced and coded
    (the effort search prices a map from the same probabilities the range coder then codes with)
    runs the context model once. The numbers are the same either way; only the time changes."""
    global _MEMO
    outer = _MEMO
    _MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer


def plane_probabilities(net, plane: np.ndarray, k: int, levels: int,
                        paired: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """(selection, (n, K) coding probabilities) of each coding group of one (h, w) plane, in
    coding order: exactly what ``encode_context`` codes the plane with (``remembering`` keeps them)."""
    h, w = plane.shape
    key = (id(net), k, (levels, paired), h, w, np.ascontiguousarray(plane, dtype=np.int64).tobytes())
    if _MEMO is not None and key in _MEMO:
        return _MEMO[key]
    idx = torch.from_numpy(plane.astype(np.int64))
    visible = torch.zeros(h, w, dtype=torch.bool)
    out = []
    for sel in groups_in_order(h, w, levels, paired):
        out.append((sel, np.concatenate(list(_group_probs(net, idx, visible, sel, k)))))
        visible |= torch.from_numpy(sel)
    if _MEMO is not None:
        size = h * w * k * 8
        while _MEMO and sum(h_ * w_ * k_ * 8 for (_, k_, _, h_, w_, _) in _MEMO) + size > MEMO_BYTES:
            _MEMO.pop(next(iter(_MEMO)))  # the oldest map first
        if size <= MEMO_BYTES:
            _MEMO[key] = out
    return out


def map_checksum(indices: np.ndarray) -> int:
    return binascii.crc_hqx(np.ascontiguousarray(indices, dtype="<u2").tobytes(), 0xFFFF)


def encode_context(indices: np.ndarray, net, k: int, tag: int = 0, levels: int = 1, paired: bool = False) -> bytes:
    """(m, h, w) indices -> model tag (u16) + CRC-16 of the map (u16) + range-coded words (LE u32)."""
    m, h, w = indices.shape
    enc = constriction.stream.queue.RangeEncoder()
    for j in range(m):
        if _MEMO is not None:  # whole groups, kept for the next pricing or coding of this map
            for sel, probs in plane_probabilities(net, indices[j], k, levels, paired):
                vals = indices[j][sel].astype(np.int32)
                for part in range(0, len(probs), CHUNK):
                    enc.encode(vals[part : part + CHUNK], _Categorical(perfect=False), probs[part : part + CHUNK])
            continue
        plane = torch.from_numpy(indices[j].astype(np.int64))
        visible = torch.zeros(h, w, dtype=torch.bool)
        for sel in groups_in_order(h, w, levels, paired):
            vals = indices[j][sel].astype(np.int32)
            done = 0
            for probs in _group_probs(net, plane, visible, sel, k):
                enc.encode(vals[done : done + len(probs)], _Categorical(perfect=False), probs)
                done += len(probs)
            visible |= torch.from_numpy(sel)
    words = enc.get_compressed().astype("<u4").tobytes()
    return struct.pack("<HH", tag, map_checksum(indices)) + words


def decode_context(payload: bytes, net, k: int, m: int, h: int, w: int, tag: int = 0, levels: int = 1,
                   paired: bool = False) -> np.ndarray:  # fmt: skip
    if len(payload) < 4 or (len(payload) - 4) % 4:
        raise VqcFormatError("context-coded payload has a bad length")
    file_tag, crc = struct.unpack("<HH", payload[:4])
    if file_tag != tag:
        raise VqcFormatError(f"file was context-coded with another context model (tag {file_tag:04x}, "
                             f"this bundle has {tag:04x})")  # fmt: skip
    words = np.frombuffer(payload[4:], dtype="<u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    out = np.zeros((m, h, w), dtype=np.int64)
    try:
        for j in range(m):
            plane = torch.zeros(h, w, dtype=torch.int64)
            visible = torch.zeros(h, w, dtype=torch.bool)
            for sel in groups_in_order(h, w, levels, paired):
                vals = np.concatenate([np.asarray(dec.decode(_Categorical(perfect=False), probs), dtype=np.int64)
                                       for probs in _group_probs(net, plane, visible, sel, k)])  # fmt: skip
                out[j][sel] = vals
                plane[torch.from_numpy(sel)] = torch.from_numpy(vals)
                visible |= torch.from_numpy(sel)
    except (AssertionError, ValueError, RuntimeError) as e:
        raise VqcFormatError(f"context decoding failed: {e}") from None
    if map_checksum(out) != crc:
        raise VqcFormatError("index-map checksum mismatch: the context model differs from the encoder's")
    return out
