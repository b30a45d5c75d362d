"""The index-map transformer in integer arithmetic: the same logits on every CPU, GPU and thread count.

Why: the context coder turns the transformer's output into the range coder's frequencies, and the
decoder must rebuild them bit for bit. Float logits differ in their last bits between kernels
(AVX-512 against AVX2, one thread against two, CPU against CUDA), and ``round(p * 2^16)`` turns
that into different frequencies: a file made on one computer failed on another (before 0.1.0's exact mode). Here
every number from the index map to the frequencies is an integer, computed by an arithmetic whose
result does not depend on the order of operations (the recipe of Ballé et al., "Integer networks
for data compression", and I-BERT's integer LayerNorm and softmax):

- activations are fixed-point integers at scale 2^-ACT_BITS, saturated to +-LIMIT after every step;
- weights are int16 with a power-of-two scale per output channel (``w ~ W * 2^-e``), so
  requantising an accumulator is a rounding right shift, no multiplier;
- products are summed as float64 matrix products of integer-valued tensors: every partial sum stays
  below 2^53 (bounds in ``docs/bitstream.md``), so BLAS, cuBLAS or numpy give the exact integer in
  any summation order, with or without FMA;
- GELU and exp are lookup tables stored in the file (computed once at export from ``math``, then
  only read), LayerNorm uses an exact integer square root, softmax is an integer division;
- no float is ever rounded except the float64 square root inside ``isqrt``, whose result is then
  corrected to the exact integer floor.

The network is exported from a trained ``IndexTransformer`` (non-causal) by ``export``; the stored
tensors are all integers, so a third party can reimplement ``forward`` from ``docs/bitstream.md``
(``tests/int_reference.py`` does, in numpy alone).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec.nets.transformer import TILE, IndexTransformer, sincos_2d

ACT_BITS = 10
"""Fractional bits of every activation: x ~ v * 2^-10."""
LIMIT = (1 << 19) - 1
"""Saturation bound of activations (|x| < 512): keeps every float64 partial sum below 2^53."""
WEIGHT_MAX = (1 << 15) - 1
LN_BITS = 8
"""Extra bits of the LayerNorm standard deviation (sigma is kept at scale 2^-(ACT_BITS + LN_BITS))."""
PROB_BITS = 16
"""exp table scale: exp(0) = 2^16; attention weights are rounded to 2^-16."""
GELU_RANGE = 8
"""GELU is tabulated on [-8, 8); below it is 0, above it the identity."""
SHAPES_MAX_TOKENS = 1024


def rdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The integer nearest a / b (halves up), int64 tensors, b > 0."""
    return torch.div(2 * a + b, 2 * b, rounding_mode="floor")


def fdiv_round(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The integer nearest a / b (halves up) for integer-valued float64 tensors, b > 0, |a|, b < 2^50:
    a float64 quotient, then corrected to the exact floor((2a + b) / 2b) with exact integer checks
    (every product and difference below stays under 2^53). Faster than int64 division."""
    num, den = 2 * a + b, 2 * b
    q = torch.floor(num / den)
    r = num - q * den
    q = q - (r < 0).double() + (r >= den).double()
    return q


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) exactly for int64 0 <= v < 2^62: a float64 estimate, then corrected in integers."""
    r = torch.sqrt(v.double()).floor().long()
    for _ in range(2):
        r = torch.where(r * r > v, r - 1, r)
    for _ in range(2):
        r = torch.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def sat(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-LIMIT, LIMIT)


# ---------------------------------------------------------------------------------------------
# export: float IndexTransformer -> integer tensors


def _q_linear(weight: torch.Tensor, bias: torch.Tensor | None, prefix: str, out: dict) -> None:
    """int16 weights with a per-output-channel shift e (w ~ W * 2^-e), bias at the activation scale."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    peak = w.abs().amax(1)
    e = torch.where(peak > 0, torch.floor(torch.log2(WEIGHT_MAX / peak.clamp_min(1e-30))), torch.zeros_like(peak))
    e = e.clamp(0, 40).long()
    wq = torch.round(w * torch.pow(2.0, e.double())[:, None]).long()
    if wq.abs().max() > WEIGHT_MAX:
        raise ValueError(f"{prefix}: weight does not fit int16 after scaling")
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    out[f"{prefix}.w"] = wq.to(torch.int16)
    out[f"{prefix}.e"] = e.to(torch.int8)
    out[f"{prefix}.b"] = torch.round(b * 2**ACT_BITS).clamp(-LIMIT, LIMIT).to(torch.int32)


def _q_norm(norm: torch.nn.LayerNorm, prefix: str, out: dict) -> None:
    out[f"{prefix}.g"] = torch.round(norm.weight.detach().double() * 2 ** (ACT_BITS + LN_BITS)).to(torch.int32)
    out[f"{prefix}.b"] = torch.round(norm.bias.detach().double() * 2**ACT_BITS).to(torch.int32)


def _act(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.detach().double() * 2**ACT_BITS).clamp(-LIMIT, LIMIT).to(torch.int32)


def tables() -> dict[str, torch.Tensor]:
    """The lookup tables, computed with ``math`` at export (then stored and only read)."""
    exp = []
    while True:
        v = round(2**PROB_BITS * math.exp(-len(exp) / 2**ACT_BITS))
        if v == 0:
            break
        exp.append(v)
    span = GELU_RANGE << ACT_BITS
    xs = [i / 2**ACT_BITS for i in range(-span, span)]
    gelu = [round(x * 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) * 2**ACT_BITS) for x in xs]
    return {"lut.exp": torch.tensor(exp, dtype=torch.int32), "lut.gelu": torch.tensor(gelu, dtype=torch.int32)}


def export(net: IndexTransformer) -> dict[str, torch.Tensor]:
    """All-integer tensors of a trained (non-causal) ``IndexTransformer``; see ``IntTransformer``."""
    cfg = net.config
    if cfg.causal:
        raise ValueError("the integer transformer covers bidirectional (masked) models only")
    out: dict[str, torch.Tensor] = {}
    out["embed"] = _act(net.embed.weight)
    out["mask_token"] = _act(net.mask_token)
    out["pe"] = _act(sincos_2d(TILE, TILE, cfg.dim))
    for i, block in enumerate(net.local):
        _q_linear(block.conv.weight, block.conv.bias, f"local.{i}.conv", out)
        _q_linear(block.proj.weight, block.proj.bias, f"local.{i}.proj", out)
    dh = cfg.dim // cfg.heads
    for i, layer in enumerate(net.trunk.layers):
        w = layer.self_attn.in_proj_weight.detach().clone()
        b = layer.self_attn.in_proj_bias.detach().clone()
        w[: cfg.dim] /= math.sqrt(dh)  # the 1/sqrt(d_head) of the scores, folded into q
        b[: cfg.dim] /= math.sqrt(dh)
        _q_norm(layer.norm1, f"layers.{i}.ln1", out)
        _q_linear(w, b, f"layers.{i}.qkv", out)
        _q_linear(layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias, f"layers.{i}.out", out)
        _q_norm(layer.norm2, f"layers.{i}.ln2", out)
        _q_linear(layer.linear1.weight, layer.linear1.bias, f"layers.{i}.ff1", out)
        _q_linear(layer.linear2.weight, layer.linear2.bias, f"layers.{i}.ff2", out)
    _q_norm(net.norm, "norm", out)
    _q_linear(net.head.weight, net.head.bias, "head", out)
    eps = net.norm.eps
    out["ln_eps"] = torch.tensor([round(eps * 2 ** (2 * (ACT_BITS + LN_BITS)))], dtype=torch.int64)
    out.update(tables())
    return out


# ---------------------------------------------------------------------------------------------
# inference


def _tile_pattern(sel: torch.Tensor, r0: int, r1: int) -> torch.Tensor | None:
    """The (TILE, TILE) pattern of ``sel`` (h, w) if every tile of map rows r0..r1 (r0 a multiple
    of TILE) holds the same one, where the map reaches; else None."""
    w = sel.shape[1]
    band = sel[r0:r1]
    first = band[:TILE, :TILE]
    pattern = torch.zeros(TILE, TILE, dtype=torch.bool)
    pattern[: first.shape[0], : first.shape[1]] = first
    th, tw = -(-band.shape[0] // TILE), -(-w // TILE)
    return pattern if torch.equal(pattern.repeat(th, tw)[: band.shape[0], :w], band) else None


class IntTransformer:
    """Integer inference of an exported index-map transformer: ``forward`` gives integer logits at
    scale 2^-ACT_BITS, ``frequencies`` the range coder's integer frequencies. Same results on any
    device (``to``) and thread count.

    The integers are carried in float64 tensors (the form BLAS multiplies fastest); every operation
    on them is exact there: sums and products below 2^53, power-of-two scalings and floors. Only
    LayerNorm's and the softmax's divisions run in int64."""

    tiled = IndexTransformer.tiled
    bands = staticmethod(IndexTransformer.bands)

    def __init__(self, cfg, tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> None:
        self._configure(cfg, tensors)
        t = {k: v.to(torch.int64) for k, v in tensors.items()}
        # exp beyond the table is 0: one zero appended makes the lookup a single gather of min(d, n)
        t["lut.exp"] = torch.cat([t["lut.exp"], torch.zeros(1, dtype=torch.int64)])
        self.t = {k: v.double() for k, v in t.items()}
        for name, e in t.items():  # per-channel requantisation: floor(acc * 2^-e + (1/2 if e else 0) + b)
            if name.endswith(".e"):
                self.t[name[:-1] + "offset"] = (e > 0).double() / 2 + t[name[:-1] + "b"].double()
                self.t[name[:-1] + "scale"] = torch.pow(2.0, -e.double())
        self.device = torch.device("cpu")
        self.to(device)

    def _configure(self, cfg, tensors: dict[str, torch.Tensor]) -> None:
        """The config, each K's row offset, and the stored tensors' checks (before anything is built)."""
        if cfg.causal:
            raise ValueError("the integer transformers cover bidirectional (masked) models only")
        self.config = cfg
        self.offsets = dict(zip(cfg.sizes, np.cumsum((0,) + tuple(cfg.sizes)).tolist(), strict=False))
        self.total = sum(cfg.sizes)
        self._check(tensors)

    def _tokens(self, indices: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
        """(B, h, w, D) input tokens of one tile batch (the mask token where masked) and K's row offset."""
        if k not in self.offsets:
            raise ValueError(f"K={k} not among the transformer's sizes {self.config.sizes}")
        if indices.shape[1] > TILE or indices.shape[2] > TILE:
            raise ValueError(f"the integer transformer runs on tiles of at most {TILE}x{TILE}")
        indices, mask = indices.to(self.device), mask.to(self.device)
        o, slot = self.offsets[k], self.config.sizes.index(k)
        tok = self.t["embed"][indices.clamp(0, k - 1) + o]
        return torch.where(mask[..., None], self.t["mask_token"][slot].expand_as(tok), tok), o

    def to(self, device: str | torch.device) -> IntTransformer:
        device = torch.device(device)
        if device != self.device:
            self.t = {k: v.to(device) for k, v in self.t.items()}
            self.device = device
        return self

    def _check(self, t: dict[str, torch.Tensor]) -> None:
        """Shapes and value bounds that the exactness argument needs (a damaged file fails here)."""
        c = self.config
        d, hid = c.dim, c.dim * c.mlp
        if max(9 * d, hid) > 1 << 11 or d % c.heads:
            raise ValueError("integer transformer: inner products longer than 2^11 terms would not stay exact")
        want = {"embed": (self.total, d), "mask_token": (len(c.sizes), d), "pe": (TILE * TILE, d),
                "norm.g": (d,), "norm.b": (d,), "ln_eps": (1,)}  # fmt: skip
        lin = {"head": (self.total, d)}
        for i in range(c.local):
            lin[f"local.{i}.conv"] = (d, d * 9)
            lin[f"local.{i}.proj"] = (d, d)
        for i in range(c.depth):
            lin |= {f"layers.{i}.qkv": (3 * d, d), f"layers.{i}.out": (d, d), f"layers.{i}.ff1": (hid, d),
                    f"layers.{i}.ff2": (d, hid)}  # fmt: skip
            for n in ("ln1", "ln2"):
                want |= {f"layers.{i}.{n}.g": (d,), f"layers.{i}.{n}.b": (d,)}
        for p, shape in lin.items():
            want |= {f"{p}.w": shape, f"{p}.e": (shape[0],), f"{p}.b": (shape[0],)}
        want |= {"lut.exp": None, "lut.gelu": (2 * (GELU_RANGE << ACT_BITS),)}
        for name, shape in want.items():
            v = t.get(name)
            if v is None or (shape is not None and tuple(v.shape) != shape) or v.ndim == 0:
                raise ValueError(f"integer transformer: tensor {name} missing or not of shape {shape}")
            if v.dtype.is_floating_point or v.dtype == torch.bool:
                raise ValueError(f"integer transformer: tensor {name} is not integer")
        for p in lin:
            if (
                int(t[f"{p}.w"].abs().max()) > WEIGHT_MAX
                or not 0 <= int(t[f"{p}.e"].min()) <= int(t[f"{p}.e"].max()) <= 40
            ):
                raise ValueError(f"integer transformer: {p} out of range")
        exp = t["lut.exp"]
        if exp.ndim != 1 or not 1 <= exp.numel() <= 1 << 20 or int(exp[0]) != 1 << PROB_BITS or int(exp.min()) < 1:
            raise ValueError("integer transformer: bad exp table")
        if not 1 <= int(t["ln_eps"][0]) < 1 << 40:
            raise ValueError("integer transformer: bad LayerNorm epsilon")
        for name, v in t.items():
            if name.endswith((".g", ".b")) or name in ("embed", "mask_token", "pe", "lut.gelu"):
                if int(v.abs().max()) > LIMIT:
                    raise ValueError(f"integer transformer: {name} out of range")

    # -- the operations of docs/bitstream.md, "The integer context model" --------------------
    def _linear(self, x: torch.Tensor, p: str, rows: slice = slice(None)) -> torch.Tensor:
        """sat(round(x W^T 2^-e) + b): an exact float64 product (partial sums < 2^53), then a shift."""
        t = self.t
        acc = torch.matmul(x, t[f"{p}.w"][rows].t())
        # acc * 2^-e is exact and has at most e fraction bits, so adding 1/2 + b is exact too
        return torch.addcmul(t[f"{p}.offset"][rows], acc, t[f"{p}.scale"][rows]).floor_().clamp_(-LIMIT, LIMIT)

    def _norm(self, x: torch.Tensor, p: str) -> torch.Tensor:
        """Integer LayerNorm: mean rounded, variance floored, sigma = isqrt(var 2^16 + eps),
        y = round(xc g / sigma) + b. Row statistics in int64, the rest exact in float64."""
        n = x.shape[-1]
        mu = rdiv(x.sum(-1, keepdim=True).long(), torch.tensor(n, device=x.device))
        xc = x - mu.double()
        var = torch.div((xc * xc).sum(-1, keepdim=True).long(), n, rounding_mode="floor")  # sum < 2^53
        sigma = isqrt((var << (2 * LN_BITS)) + self.t["ln_eps"].long()).double()
        return fdiv_round(xc * self.t[f"{p}.g"], sigma).add_(self.t[f"{p}.b"]).clamp_(-LIMIT, LIMIT)

    def _gelu(self, x: torch.Tensor) -> torch.Tensor:
        """T[max(x, -2^13) + 2^13] below 2^13 (T[0] = round(2^10 GELU(-8)) = 0), the identity above."""
        span = GELU_RANGE << ACT_BITS
        table = torch.take(self.t["lut.gelu"], (x.clamp(-span, span - 1) + span).long())
        return torch.where(x >= span, x, table)

    def exp_weights(self, d: torch.Tensor) -> torch.Tensor:
        """round(2^16 exp(-d 2^-10)) for integer d >= 0 (0 beyond the table)."""
        table = self.t["lut.exp"]
        return torch.take(table, d.clamp_(0, table.numel() - 1).long())

    def _attention(self, x: torch.Tensor, i: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Multi-head self-attention; with ``keep`` only those query positions (all keys)."""
        b, n, d = x.shape
        heads = self.config.heads
        dh = d // heads
        qkv = self._linear(x, f"layers.{i}.qkv").reshape(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
        queries = qkv[0] if keep is None else qkv[0][:, :, keep]
        nq = queries.shape[2]
        out = torch.empty(b, heads, nq, dh, dtype=torch.float64, device=x.device)
        step = max(1, (1 << 22) // (heads * n * nq))  # tiles per chunk: bounded memory on big maps
        for s in range(0, b, step):
            q, k, v = queries[s : s + step], qkv[1][s : s + step], qkv[2][s : s + step]
            raw = torch.matmul(q, k.transpose(-1, -2).contiguous())  # exact q.k, < 2^43
            d_ = (raw.amax(-1, keepdim=True) - raw).mul_(2.0**-ACT_BITS).floor_()
            e = self.exp_weights(d_)
            out[s : s + step] = fdiv_round(torch.matmul(e, v), e.sum(-1, keepdim=True))  # e.v < 2^16 2^19 n
        return self._linear(out.permute(0, 2, 1, 3).reshape(b, nq, d), f"layers.{i}.out")

    def _conv3x3(self, x: torch.Tensor, p: str) -> torch.Tensor:
        """3x3 convolution, zero padding: the linear layer on the 3x3 neighbourhoods (unfold)."""
        b, c, h, w = x.shape
        t = self.t
        acc = torch.matmul(t[f"{p}.w"], F.unfold(x, 3, padding=1))  # (b, out, h*w)
        y = torch.addcmul(t[f"{p}.offset"][:, None], acc, t[f"{p}.scale"][:, None]).floor_().clamp_(-LIMIT, LIMIT)
        return y.reshape(b, -1, h, w)

    def forward(
        self, indices: torch.Tensor, mask: torch.Tensor, k: int, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Integer logits (B, h, w, K) at scale 2^-ACT_BITS (float64 holding integers); ``mask``
        True where the index is unknown. Maps of at most TILE x TILE positions (the position table).
        ``keep``: only the logits of these flat positions, (B, len(keep), K): the last layer then
        runs its queries, MLP and head on them alone (every other number is the same)."""
        b, h, w = indices.shape
        tok, o = self._tokens(indices, mask, k)
        grid = tok.permute(0, 3, 1, 2)
        for i in range(self.config.local):
            y = self._gelu(self._conv3x3(grid, f"local.{i}.conv"))
            y = self._linear(y.permute(0, 2, 3, 1), f"local.{i}.proj").permute(0, 3, 1, 2)
            grid = sat(grid + y)
        pe = self.t["pe"].reshape(TILE, TILE, -1)[:h, :w].reshape(h * w, -1)
        x = sat(grid.permute(0, 2, 3, 1).reshape(b, h * w, -1) + pe)
        depth = self.config.depth
        for i in range(depth):
            rows = keep if i == depth - 1 else None
            a = self._attention(self._norm(x, f"layers.{i}.ln1"), i, rows)
            x = sat((x if rows is None else x[:, rows]) + a)
            f = self._gelu(self._linear(self._norm(x, f"layers.{i}.ln2"), f"layers.{i}.ff1"))
            x = sat(x + self._linear(f, f"layers.{i}.ff2"))
        logits = self._linear(self._norm(x, "norm"), "head", slice(o, o + k))
        return logits.reshape(b, h, w, k) if keep is None else logits

    def coding_logits(self, indices: torch.Tensor, mask: torch.Tensor, k: int, sel: torch.Tensor,
                      rows: tuple[int, int]) -> torch.Tensor:  # fmt: skip
        """(n, K) logits of the positions ``sel`` (h, w) within map rows ``rows`` (a band of
        ``bands``), in raster order: ``tiled(indices, mask, k, rows=rows)[sel[rows]]``, computed
        faster when ``sel`` is a lattice coset that repeats in every tile (the context coder's
        groups): only those positions' last layer, and a map with nothing visible (the first
        group) is one tile's work, since every tile of it is the same input."""
        h, w = indices.shape
        r0, r1 = rows
        pattern = _tile_pattern(sel, r0, r1)
        if pattern is None:
            return self.tiled(indices, mask, k, rows=rows)[sel[r0:r1].to(self.device)]
        tile = TILE
        th, tw = -(-h // tile), -(-w // tile)
        keep = torch.nonzero(pattern.flatten()).flatten().to(self.device)
        r1 = min(-(-r1 // tile) * tile, th * tile)  # whole tile rows
        nt = (r1 - r0) // tile
        if not bool((~mask).any()):  # nothing visible: every tile sees the same input
            one = self.forward(torch.zeros(1, tile, tile, dtype=torch.int64), torch.ones(1, tile, tile, dtype=torch.bool),
                               k, keep)  # fmt: skip
            logits = one.expand(nt * tw, -1, -1)
        else:
            idx = F.pad(indices, (0, tw * tile - w, 0, th * tile - h))[r0:r1]
            msk = F.pad(mask, (0, tw * tile - w, 0, th * tile - h), value=True)[r0:r1]
            split = lambda t: t.reshape(nt, tile, tw, tile).permute(0, 2, 1, 3).reshape(nt * tw, tile, tile)  # noqa: E731
            logits = self.forward(split(idx), split(msk), k, keep)
        # tile-major (tile row, tile col, kept position) -> map raster order, inside the map only
        lr, lc = keep.cpu() // tile, keep.cpu() % tile
        ty, tx = torch.meshgrid(torch.arange(nt), torch.arange(tw), indexing="ij")
        rr = (ty.reshape(-1, 1) * tile + lr[None]).flatten() + r0
        cc = (tx.reshape(-1, 1) * tile + lc[None]).flatten()
        inside = (rr < h) & (cc < w)
        order = torch.argsort((rr * w + cc)[inside])
        flat = logits.reshape(-1, k)[inside.to(self.device)]
        return flat[order.to(self.device)]

    __call__ = forward

    def frequencies(self, logits: torch.Tensor, temperature: Fraction = Fraction(1)) -> torch.Tensor:
        """(..., K) integer logits -> int64 frequencies >= 1: round(2^16 exp((l - max l) / t)), floored
        at 1; a temperature t other than 1 scales the differences in integers (rounded to nearest)."""
        d = logits.amax(-1, keepdim=True) - logits
        if temperature != 1:
            d = rdiv(d * temperature.denominator, torch.tensor(temperature.numerator))
        return self.exp_weights(d).long().clamp_min(1)

    def pooled_logits(self, indices: torch.Tensor, mask: torch.Tensor, k: int, tile: int = TILE) -> torch.Tensor:
        """(h, w, K) int64 logits of one map from half-overlapping tiles, a weighted mean per
        position (the pyramid weights of ``IndexTransformer.overlapped_log_probs``). Averaging
        logits equals averaging log-probabilities up to a per-position constant, which the
        softmax removes, so this is the float recovery's pooling, in integers."""
        h, w = indices.shape
        hp, wp = max(h, tile), max(w, tile)
        idx = F.pad(indices, (0, wp - w, 0, hp - h))
        msk = F.pad(mask, (0, wp - w, 0, hp - h), value=True)
        starts = lambda n: sorted({*range(0, n - tile, tile // 2), n - tile})  # noqa: E731
        corners = [(y, x) for y in starts(hp) for x in starts(wp)]
        acc = torch.zeros(hp, wp, k, dtype=torch.float64, device=self.device)
        total = torch.zeros(hp, wp, 1, dtype=torch.float64, device=self.device)
        ramp = torch.minimum(torch.arange(tile), torch.arange(tile).flip(0)) + 1
        weight = (ramp[:, None] * ramp[None, :]).double().to(self.device)[..., None]
        chunk = 64
        for c0 in range(0, len(corners), chunk):
            part = corners[c0 : c0 + chunk]
            logits = self.forward(torch.stack([idx[y : y + tile, x : x + tile] for y, x in part]),
                                  torch.stack([msk[y : y + tile, x : x + tile] for y, x in part]), k)  # fmt: skip
            for (y, x), lg in zip(part, logits, strict=True):
                acc[y : y + tile, x : x + tile] += weight * lg  # |acc| < 2^19 * 64 * 4
                total[y : y + tile, x : x + tile] += weight
        return rdiv(acc.long(), total.long())[:h, :w]

    @torch.inference_mode()
    def fill_soft(self, indices: torch.Tensor, missing: torch.Tensor, k: int, codes: torch.Tensor | None,
                  steps: int = 6, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """MaskGIT-style filling as ``IndexTransformer.fill_soft``, with every decision in integers:
        which holes are filled in each round (confidence = the largest frequency's share, ties to
        the lower position) and which index each gets (the code nearest the frequency-weighted mean
        code vector, with the codes rounded to 2^-14; ties to the lower index), so the recovered
        index map is the same on every machine. The (h, w, d) mean code vectors given to the decoder
        are float (as the decoder itself). Without ``codes``: the likeliest index. ``temperature``:
        as in ``IndexTransformer.fill_soft``, the decoder's blend only (a rational, the logit
        differences scaled in integers), so the index map does not depend on it."""
        t = Fraction(temperature).limit_denominator(64)
        h, w = indices.shape
        idx, miss = indices.clone().to(self.device), missing.clone().to(self.device)
        total = int(miss.sum())
        cq = None
        if codes is not None:
            codes = codes.to(self.device)
            cq = torch.round(codes.double() * (1 << 14))  # integers in float64
            soft = torch.zeros(h * w, codes.shape[1], dtype=codes.dtype, device=self.device)
        order = torch.arange(h * w - 1, -1, -1, device=self.device)  # ties: lower position first
        tie = torch.arange(k - 1, -1, -1, device=self.device)  # ties: lower index first
        for step in range(steps):
            left = int(miss.sum())
            if left == 0:
                break
            logits = self.pooled_logits(idx, miss, k)
            freq = self.frequencies(logits).reshape(h * w, k)
            fsum = freq.sum(-1)
            conf = torch.div(freq.amax(-1) << 32, fsum, rounding_mode="floor")
            if cq is None:
                pred = ((freq << 17) + tie).argmax(-1)
            else:
                mean = rdiv(torch.matmul(freq.double(), cq).long() << 14, fsum[:, None])  # |mean| <= 2^14
                score = torch.matmul(mean.double(), cq.t()).long()  # |score| < 2^33
                pred = ((score << 17) + tie).argmax(-1)
            keep_left = math.floor(total * math.cos(math.pi / 2 * (step + 1) / steps))
            n_fill = max(1, left - keep_left) if step < steps - 1 else left
            key = torch.where(miss.flatten(), (conf << 20) + order, torch.full_like(conf, -1))
            chosen = key.topk(n_fill).indices
            flat_idx, flat_miss = idx.flatten(), miss.flatten()
            flat_idx[chosen] = pred[chosen]
            flat_miss[chosen] = False
            if cq is not None:
                blend = freq if t == 1 else self.frequencies(logits, t).reshape(h * w, k)
                p = blend[chosen].to(codes.dtype) / blend[chosen].sum(-1, keepdim=True).to(codes.dtype)
                soft[chosen] = p @ codes
            idx, miss = flat_idx.view(h, w), flat_miss.view(h, w)
        return idx.cpu(), None if cq is None else soft.view(h, w, -1).cpu()

    @torch.inference_mode()
    def fill(self, indices: torch.Tensor, missing: torch.Tensor, k: int, steps: int = 6,
             codes: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        return self.fill_soft(indices, missing, k, codes, steps)[0]
