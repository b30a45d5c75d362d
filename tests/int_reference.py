"""A second implementation of the integer context model, from docs/bitstream.md alone, in numpy int64.

It shares no code with ``vqcodec/nets/int_transformer.py`` (which carries its integers in float64
and multiplies them with BLAS): here every product is numpy's int64 matmul and every shift and
division is integer. Equal outputs on real index maps show that the spec says enough to rebuild the
frequencies a file was coded with, and that the production path's float64 carrying is exact.
"""

from __future__ import annotations

import numpy as np

ACT = 10  # fractional bits of activations
LIM = (1 << 19) - 1  # saturation
TILE = 16


def sat(v):
    return np.clip(v, -LIM, LIM)


def rdiv(a, b):
    """round(a / b), halves up, b > 0."""
    return (2 * a + b) // (2 * b)


def isqrt(v):
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    for _ in range(3):
        r = np.where(r * r > v, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


class Reference:
    def __init__(self, tensors: dict[str, np.ndarray], sizes, dim, depth, heads, local):
        self.t = {k: np.asarray(v).astype(np.int64) for k, v in tensors.items()}
        self.sizes, self.dim, self.depth, self.heads, self.local = list(sizes), dim, depth, heads, local
        self.offsets = dict(zip(self.sizes, np.cumsum([0] + self.sizes).tolist(), strict=False))

    def linear(self, x, p, rows=slice(None)):
        w, e, b = self.t[p + ".w"][rows], self.t[p + ".e"][rows], self.t[p + ".b"][rows]
        acc = x @ w.T
        half = np.where(e > 0, np.left_shift(1, np.maximum(e - 1, 0)), 0)
        return sat(((acc + half) >> e) + b)

    def norm(self, x, p):
        n = x.shape[-1]
        mu = rdiv(x.sum(-1, keepdims=True), n)
        xc = x - mu
        var = (xc * xc).sum(-1, keepdims=True) // n
        sigma = isqrt(var * (1 << 16) + self.t["ln_eps"][0])
        return sat(rdiv(xc * self.t[p + ".g"], sigma) + self.t[p + ".b"])

    def gelu(self, x):
        span = 8 << ACT
        table = self.t["lut.gelu"]
        return np.where(x >= span, x, table[np.clip(x, -span, span - 1) + span])

    def exp(self, d):
        table = self.t["lut.exp"]
        return np.where(d < len(table), table[np.minimum(d, len(table) - 1)], 0)

    def attention(self, x, i):
        b, n, d = x.shape
        h, dh = self.heads, d // self.heads
        qkv = self.linear(x, f"layers.{i}.qkv").reshape(b, n, 3, h, dh).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv
        raw = q @ k.transpose(0, 1, 3, 2)
        e = self.exp((raw.max(-1, keepdims=True) - raw) >> ACT)
        out = rdiv(e @ v, e.sum(-1, keepdims=True))
        return self.linear(out.transpose(0, 2, 1, 3).reshape(b, n, d), f"layers.{i}.out")

    def conv3x3(self, x, p):
        b, c, h, w = x.shape
        pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        cols = np.stack([pad[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], 2)
        cols = cols.reshape(b, c * 9, h * w).transpose(0, 2, 1)  # channel-major, then (dy, dx)
        return self.linear(cols, p).transpose(0, 2, 1).reshape(b, -1, h, w)

    def forward(self, idx, mask, k):
        """idx, mask: (b, h, w) with h, w <= 16 -> (b, h, w, k) int64 logits."""
        b, h, w = idx.shape
        o, slot = self.offsets[k], self.sizes.index(k)
        tok = self.t["embed"][np.clip(idx, 0, k - 1) + o]
        tok = np.where(mask[..., None], self.t["mask_token"][slot], tok)
        grid = tok.transpose(0, 3, 1, 2)
        for i in range(self.local):
            y = self.gelu(self.conv3x3(grid, f"local.{i}.conv"))
            y = self.linear(y.transpose(0, 2, 3, 1), f"local.{i}.proj").transpose(0, 3, 1, 2)
            grid = sat(grid + y)
        pe = self.t["pe"].reshape(TILE, TILE, -1)[:h, :w].reshape(h * w, -1)
        x = sat(grid.transpose(0, 2, 3, 1).reshape(b, h * w, -1) + pe)
        for i in range(self.depth):
            x = sat(x + self.attention(self.norm(x, f"layers.{i}.ln1"), i))
            f = self.gelu(self.linear(self.norm(x, f"layers.{i}.ln2"), f"layers.{i}.ff1"))
            x = sat(x + self.linear(f, f"layers.{i}.ff2"))
        return self.linear(self.norm(x, "norm"), "head", slice(o, o + k)).reshape(b, h, w, k)

    def map_logits(self, idx, mask, k):
        """(h, w) map -> (h, w, k): 16x16 tiles, padding positions masked."""
        h, w = idx.shape
        th, tw = -(-h // TILE), -(-w // TILE)
        pi = np.zeros((th * TILE, tw * TILE), np.int64)
        pm = np.ones((th * TILE, tw * TILE), bool)
        pi[:h, :w], pm[:h, :w] = idx, mask
        tiles = lambda a: a.reshape(th, TILE, tw, TILE).transpose(0, 2, 1, 3).reshape(-1, TILE, TILE)  # noqa: E731
        out = self.forward(tiles(pi), tiles(pm), k)
        return out.reshape(th, tw, TILE, TILE, k).transpose(0, 2, 1, 3, 4).reshape(th * TILE, tw * TILE, k)[:h, :w]

    def frequencies(self, logits):
        return np.maximum(self.exp(logits.max(-1, keepdims=True) - logits), 1)


# ---------------------------------------------------------------------------------------------
# The int8 context model (coding mode int8), from docs/bitstream.md, "The int8 context model".

LN_BITS8, RECIP, EXP2 = 4, 26, (131200, -2770, 23)


class Int8Reference:
    """numpy int64 implementation of ``vqcodec/nets/int8_transformer.py`` (which multiplies int8 with
    ``torch._int_mm`` and float32 BLAS): equal frequencies show both the spec and the kernels exact."""

    def __init__(self, tensors: dict[str, np.ndarray], sizes, dim, depth, heads, local):
        self.t = {k: np.asarray(v).astype(np.int64) for k, v in tensors.items()}
        self.sizes, self.dim, self.depth, self.heads, self.local = list(sizes), dim, depth, heads, local
        self.offsets = dict(zip(self.sizes, np.cumsum([0] + self.sizes).tolist(), strict=False))

    def linear(self, x8, p, rows=slice(None)):
        w, bias, s = self.t[p + ".w"][rows], self.t[p + ".bias"][rows], self.t[p + ".shift"][rows]
        y = x8 @ w.T + bias
        return np.where(s >= 0, y >> np.maximum(s, 0), y << np.maximum(-s, 0))

    @staticmethod
    def to_int8(x, s):
        return np.clip((x + (1 << (s - 1))) >> s if s else x, -127, 127)

    def norm(self, x, f):
        n = x.shape[-1]
        xc = x - rdiv(x.sum(-1, keepdims=True), n)
        var = (xc * xc).sum(-1, keepdims=True) // n
        sigma = isqrt(var * (1 << 2 * LN_BITS8) + self.t["ln_eps"][0])
        r = rdiv(np.full_like(sigma, 1 << (RECIP + f + LN_BITS8)), sigma)
        return np.clip((xc * r + (1 << (RECIP - 1))) >> RECIP, -127, 127)

    def gelu(self, y, p, f_in):
        table = self.t[p + ".gelu"]
        return table[np.clip(y + (8 << f_in), 0, len(table) - 1)]

    def attention(self, x8, i, b, n):
        d = self.dim
        h, dh = self.heads, d // self.heads
        _, fq, fk, _, _, _, _ = self.t[f"layers.{i}.frac"]
        qkv = np.clip(self.linear(x8, f"layers.{i}.qkv"), -127, 127)
        q, k, v = qkv.reshape(b, n, 3, h, dh).transpose(2, 0, 3, 1, 4)
        raw = q @ k.transpose(0, 1, 3, 2)
        dd = (raw.max(-1, keepdims=True) - raw) >> (fq + fk - 5)
        r, z = dd & 31, np.minimum(dd >> 5, 10)
        a, bb, c = EXP2
        e = ((a + r * (bb + c * r)) >> 8) >> z
        out = rdiv(e @ v, e.sum(-1, keepdims=True))
        return out.transpose(0, 2, 1, 3).reshape(b * n, d)

    def forward(self, idx, mask, k):
        """idx, mask: (b, h, w) with h, w <= 16 -> (b, h, w, k) int64 logits."""
        b, h, w = idx.shape
        d, t = self.dim, self.t
        o, slot = self.offsets[k], self.sizes.index(k)
        grid = np.where(mask[..., None], t["mask_token"][slot], t["embed"][np.clip(idx, 0, k - 1) + o])
        for i in range(self.local):
            p = f"local.{i}"
            f_in, g_in, _ = t[p + ".frac"]
            pad = np.pad(self.to_int8(grid, ACT - f_in), ((0, 0), (1, 1), (1, 1), (0, 0)))
            cols = np.concatenate([pad[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], -1)
            a8 = self.gelu(self.linear(cols.reshape(b * h * w, 9 * d), p + ".conv"), p, g_in)
            grid = sat(grid + self.linear(a8, p + ".proj").reshape(b, h, w, d))
        pe = t["pe"].reshape(TILE, TILE, -1)[:h, :w]
        x = sat(grid + pe).reshape(b * h * w, d)
        for i in range(self.depth):
            p = f"layers.{i}"
            f1, _, _, _, f2, g_in, _ = t[p + ".frac"]
            x = sat(x + self.linear(self.attention(self.norm(x, f1), i, b, h * w), p + ".out"))
            f8 = self.gelu(self.linear(self.norm(x, f2), p + ".ff1"), p, g_in)
            x = sat(x + self.linear(f8, p + ".ff2"))
        logits = sat(self.linear(self.norm(x, t["norm.frac"][0]), "head", slice(o, o + k)))
        return logits.reshape(b, h, w, k)

    map_logits = Reference.map_logits
    exp = Reference.exp
    frequencies = Reference.frequencies
