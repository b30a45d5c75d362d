"""Layered (progressive) index maps: nested codebooks, the encoder's choice of nested maps, and
the coding of each layer given the one below it.

A *layer set* is a chain of codebook sizes K_1 < ... < K_L (for example 8, 64, 1024) and a tree:
every code of layer l + 1 has one parent code in layer l. The top layer decodes with the bundle's
own K_L book; the coarser layers with books refit for the tree (``vqcodec.train.layers``), since
the flat K-means books of a bundle are not nested (on training maps, the flat K=8 code at a
position is the K=64 code's most frequent parent only 67 % of the time).

Why a tree makes progressive files cheap: when the coarse map is a function of the fine one,
H(fine) = H(coarse) + H(fine | coarse), so coding layer 1 and then each refinement given the layer
below costs about what the finest map alone costs. Each refinement is coded with the context model
of its own K (int8 / int16 integer-exact, or the static table), restricted at every position to
the children of the code the layer below put there: the same integer frequencies the single-layer
coder uses, a subset of them, so the bits stay exact on every computer. Positions whose parent has
one child cost nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import constriction
import numpy as np
import torch

from vqcodec import context, entropy
from vqcodec.errors import VqcFormatError

_Categorical = constriction.stream.model.Categorical
SELECT_ROWS = 4096
"""Latent positions scored per step when choosing nested maps (memory: rows x K_L x 4 bytes per layer)."""


@dataclass(frozen=True, eq=False)
class LayerSet:
    """A chain of nested codebooks: ``sizes`` K_1 < ... < K_L, ``parents[i]`` the (K_{i+2},) parent
    in layer i + 1 of every code of layer i + 2 (0-based: ``parents[0]`` maps layer-2 codes to
    layer-1 codes), ``books`` one book per layer (what ``quantize.dequantize`` takes), ``weights``
    the encoder's weight on each layer's match when it chooses the nested maps (``select``),
    ``tag`` 16 bits of the shipped file's sha256, written into layered files, and ``draw`` the
    vectors each layer's picture is drawn with where they differ from the books the maps are
    chosen with: the flat books of the same K (a bundle's ``"draw": "flat"``). The fit keeps code
    identities, so a coarse code's flat vector is the one the decoder was trained on, while its
    refit vector is a mean of latents: the better one to choose maps with, the worse one to draw
    (docs/history.md). The maps, hence the bits and the tag, stay those of ``books``."""

    sizes: tuple[int, ...]
    parents: tuple[np.ndarray, ...]
    books: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]
    tag: int = 0
    draw: tuple[torch.Tensor, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.sizes)
        if n < 2 or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"a layer set needs at least two increasing codebook sizes, got {self.sizes}")
        if len(self.parents) != n - 1 or len(self.books) != n or len(self.weights) != n:
            raise ValueError("a layer set needs one parent table per refinement and one book and weight per layer")
        for i, p in enumerate(self.parents):
            if p.shape != (self.sizes[i + 1],) or p.min() < 0 or p.max() >= self.sizes[i]:
                raise ValueError(f"parent table {i} does not map K={self.sizes[i + 1]} codes into K={self.sizes[i]}")
        for k, b in zip(self.sizes, self.books, strict=True):
            if b.ndim != 2 or b.shape[0] != k:
                raise ValueError(f"book of layer K={k} has shape {tuple(b.shape)}")
        if self.draw is not None and [tuple(b.shape) for b in self.draw] != [tuple(b.shape) for b in self.books]:
            raise ValueError("a layer set's draw books must have the shapes of its books")

    @property
    def draw_books(self) -> tuple[torch.Tensor, ...]:
        """The vectors each layer's picture is drawn with (``draw``, else the books themselves)."""
        return self.books if self.draw is None else self.draw

    @property
    def name(self) -> str:
        return ",".join(map(str, self.sizes))

    @cached_property
    def ancestors(self) -> list[np.ndarray]:
        """For every code of the top layer, its code in each layer (one (K_L,) array per layer)."""
        out = [np.arange(self.sizes[-1], dtype=np.int64)]
        for p in reversed(self.parents):
            out.insert(0, p[out[0]])
        return out

    @cached_property
    def children(self) -> list[list[np.ndarray]]:
        """``children[i][c]``: the codes of layer i + 1 whose parent is code c of layer i, ascending."""
        return [[np.flatnonzero(p == c) for c in range(k)] for p, k in zip(self.parents, self.sizes[:-1], strict=True)]

    @cached_property
    def local(self) -> list[np.ndarray]:
        """``local[i][code]``: where a layer-(i + 1) code stands among its parent's children."""
        out = []
        for kids, p in zip(self.children, self.parents, strict=True):
            pos = np.zeros(len(p), dtype=np.int64)
            for ch in kids:
                pos[ch] = np.arange(len(ch))
            out.append(pos)
        return out


@torch.inference_mode()
def select(z: torch.Tensor, quantizer, layer_set: LayerSet) -> list[np.ndarray]:
    """(1, d, h, w) latent -> one nested (h, w) index map per layer.

    At each position the top code whose chain of ancestors scores best, the score being the sum
    over layers of ``weights[l]`` x the layer's match (cosine similarity for cosine books, minus
    the squared distance otherwise): the nearest code of every layer cannot be had at once, since
    the flat nearest codes are not nested, so the weights say which layers' pictures matter most."""
    _, _, h, w = z.shape
    flat = quantizer.parts(z)[0].float()
    cosine = quantizer.plane_cosine
    if cosine:
        flat = torch.nn.functional.normalize(flat, dim=1)
    codes = [quantizer.codes(b).float() for b in layer_set.books]
    anc = [torch.from_numpy(a) for a in layer_set.ancestors]
    best = torch.empty(flat.shape[0], dtype=torch.int64)
    for s in range(0, flat.shape[0], SELECT_ROWS):
        x = flat[s : s + SELECT_ROWS]
        total = torch.zeros(x.shape[0], layer_set.sizes[-1])
        for c, a, wgt in zip(codes, anc, layer_set.weights, strict=True):
            score = x @ c.t() if cosine else 2 * x @ c.t() - (c**2).sum(1)[None]  # -|x-c|^2 up to |x|^2
            total += wgt * score[:, a]
        best[s : s + SELECT_ROWS] = total.argmax(dim=1)  # the first optimum: deterministic
    top = best.numpy()
    return [a[top].reshape(h, w) for a in layer_set.ancestors]


# --- coding: chunks of positions with their frequency rows, batched by parent code --------------


def _probabilities(freq: np.ndarray, rows: np.ndarray, children: np.ndarray) -> np.ndarray:
    """The rows' frequencies of ``children``, normalised, as a C-ordered float64 array: constriction
    reads the buffer in C order whatever its strides, and numpy's fancy indexing on the second
    axis may return Fortran order (measured: 25 % larger refinements, still decodable)."""
    f = np.ascontiguousarray(freq[rows][:, children], dtype=np.float64)
    return np.ascontiguousarray(f / f.sum(axis=1, keepdims=True))


def _encode_chunk(enc, local: np.ndarray, parents: np.ndarray, freq: np.ndarray, kids: list[np.ndarray],
                  static: bool = False) -> None:  # fmt: skip
    """Code the positions of one chunk, parent by parent (ascending), each among its parent's
    children; ``static``: ``freq`` is one (1, K) row for every position."""
    for p in np.unique(parents):
        ch = kids[p]
        if len(ch) < 2:
            continue  # one child: nothing to say
        rows = parents == p
        if static:  # one model for every position
            f = freq[0, ch].astype(np.float64)
            enc.encode(local[rows].astype(np.int32), _Categorical(f / f.sum(), perfect=False))
        else:
            enc.encode(local[rows].astype(np.int32), _Categorical(perfect=False), _probabilities(freq, rows, ch))


def _decode_chunk(dec, parents: np.ndarray, freq: np.ndarray, kids: list[np.ndarray], static: bool = False) -> np.ndarray:
    out = np.empty(len(parents), dtype=np.int64)
    for p in np.unique(parents):
        ch = kids[p]
        rows = parents == p
        if len(ch) == 0:
            raise VqcFormatError(f"layer code {p} has no children in this layer set")
        if len(ch) == 1:
            out[rows] = ch[0]
            continue
        if static:
            f = freq[0, ch].astype(np.float64)
            sym = dec.decode(_Categorical(f / f.sum(), perfect=False), int(rows.sum()))
        else:
            sym = dec.decode(_Categorical(perfect=False), _probabilities(freq, rows, ch))
        sym = np.asarray(sym, dtype=np.int64)
        if sym.size and sym.max() >= len(ch):
            raise VqcFormatError("refinement symbol outside its parent's children")
        out[rows] = ch[sym]
    return out


def encode_refinement(fine: np.ndarray, coarse: np.ndarray, layer_set: LayerSet, i: int, net=None,
                      counts: np.ndarray | None = None, levels: int = 1, checksum: bool = True,
                      paired: bool = False) -> bytes:  # fmt: skip
    """Layer i + 1's (h, w) map given layer i's -> CRC-16 of the map (u16) + range-coded words.

    With ``net`` (an integer-exact context model) in the context coder's group order (``paired``:
    coding mode int8-paired's), each
    position's frequencies those of the single-layer coder for K restricted to its parent's
    children; with ``counts`` (the static table of K) in raster order, for maps of any shape (a
    packet's positions). ``checksum`` False leaves out the CRC-16 (static packets: the static
    coder's arithmetic is exact, and each packet has its own CRC)."""
    kids, local = layer_set.children[i], layer_set.local[i]
    if not np.array_equal(layer_set.parents[i][fine], coarse):
        raise ValueError("the refinement is not nested in the layer below")
    enc = constriction.stream.queue.RangeEncoder()
    if net is None:
        _encode_chunk(enc, local[fine.ravel()], coarse.ravel(), np.asarray(counts)[None], kids, static=True)
    else:
        k = layer_set.sizes[i + 1]
        h, w = fine.shape
        plane = torch.from_numpy(fine.astype(np.int64))
        visible = torch.zeros(h, w, dtype=torch.bool)
        for sel in context.groups_in_order(h, w, levels, paired):
            vals, par, done = local[fine[sel]], coarse[sel], 0
            for f in context.group_frequencies(net, plane, visible, sel, k):
                n = len(f)
                _encode_chunk(enc, vals[done : done + n], par[done : done + n], f, kids)
                done += n
            visible |= torch.from_numpy(sel)
    words = entropy._words_to_bytes(enc.get_compressed())
    return (struct.pack("<H", context.map_checksum(fine[None])) if checksum else b"") + words


def decode_refinement(payload: bytes, coarse: np.ndarray, layer_set: LayerSet, i: int, net=None,
                      counts: np.ndarray | None = None, levels: int = 1, checksum: bool = True,
                      paired: bool = False) -> np.ndarray:  # fmt: skip
    """Inverse of ``encode_refinement``: layer i + 1's map. Raises ``VqcFormatError``."""
    if checksum and len(payload) < 2:
        raise VqcFormatError("refinement layer shorter than its checksum")
    crc = struct.unpack("<H", payload[:2])[0] if checksum else None
    dec = constriction.stream.queue.RangeDecoder(entropy._bytes_to_words(payload[2:] if checksum else payload))
    kids = layer_set.children[i]
    try:
        if net is None:
            fine = _decode_chunk(dec, coarse.ravel(), np.asarray(counts)[None], kids, static=True).reshape(coarse.shape)
        else:
            h, w = coarse.shape
            k = layer_set.sizes[i + 1]
            fine = np.zeros((h, w), dtype=np.int64)
            plane = torch.zeros(h, w, dtype=torch.int64)
            visible = torch.zeros(h, w, dtype=torch.bool)
            for sel in context.groups_in_order(h, w, levels, paired):
                par, parts, done = coarse[sel], [], 0
                for f in context.group_frequencies(net, plane, visible, sel, k):
                    parts.append(_decode_chunk(dec, par[done : done + len(f)], f, kids))
                    done += len(f)
                vals = np.concatenate(parts)
                fine[sel] = vals
                plane[torch.from_numpy(sel)] = torch.from_numpy(vals)
                visible |= torch.from_numpy(sel)
    except (AssertionError, ValueError, RuntimeError) as e:
        raise VqcFormatError(f"refinement decoding failed: {e}") from None
    if checksum and context.map_checksum(fine[None]) != crc:
        raise VqcFormatError("refinement map checksum mismatch: the context model differs from the encoder's")
    return fine
