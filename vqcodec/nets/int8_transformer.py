"""The index-map transformer in int8 arithmetic: coding mode ``int8``, the same integers everywhere, faster.

Why: the int16 model (``int_transformer``, coding mode ``exact``) carries its integers in float64
and multiplies them with float64 BLAS, half of a round trip's time. Here the same trained network
runs on 8-bit integers, as JPEG AI's entropy path does (8-bit multipliers, 32-bit accumulators):

- matrix products take int8 activations (|a| <= 127) and int8 weights (|w| <= 64) and sum them in
  int32 (``torch._int_mm``): every product and partial sum is an integer far below 2^31, so the
  result does not depend on the kernel. The weight bound matters: x86 CPUs without VNNI multiply
  int8 with ``vpmaddubsw``, which adds pairs of u8 x s8 products in saturating int16; with
  |w| <= 64 a pair stays below 2^15 (measured: with |w| up to 127 oneDNN's AVX2 and AVX-512
  kernels return wrong sums);
- every weight has a power-of-two scale per output channel and every activation a power-of-two
  scale per tensor (calibrated once on training index maps), so requantising an accumulator is an
  integer add (bias and rounding half) and an arithmetic shift;
- LayerNorm's scale and shift are folded into the next linear layer, so its output is the
  normalised row, rounded to int8 by an exact integer division;
- GELU is a lookup table from the accumulator's rounded value straight to the next layer's int8
  input; attention scores and the weighted sum of values are products of integer-valued float32
  tensors whose every partial sum is below 2^24 (exact in any order; float32 matmul precision is
  pinned to IEEE while they run); the scores are in log2 units (log2 e folded into the queries),
  so a softmax weight is a 9-bit integer quadratic in the fraction, shifted right by the integer
  part: no table lookup over the n x n scores, whose gathers would cost more than the products;
- the residual stream, the head's logits and the frequencies are the int16 model's: int32 at
  scale 2^-10, and ``round(2^16 exp(-d 2^-10))``.

The tensors are exported from the float ``IndexTransformer`` by ``export`` (post-training
quantisation with ranges measured on training index maps); ``docs/bitstream.md``, "The int8
context model", specifies ``forward`` and ``tests/int_reference.py`` reimplements it in numpy.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec.nets.int_transformer import ACT_BITS, LIMIT, IntTransformer, _act, fdiv_round, isqrt, rdiv
from vqcodec.nets.int_transformer import tables as int16_tables
from vqcodec.nets.transformer import TILE, IndexTransformer, sincos_2d

A_MAX = 127
"""Bound of every int8 activation."""
W_MAX = 64
"""Bound of every int8 weight (see the module docstring: non-VNNI int8 kernels)."""
LN_BITS = 4
"""Extra fractional bits of the LayerNorm standard deviation (sigma at scale 2^-(ACT_BITS + LN_BITS))."""
ATT_BITS = 9
"""Attention weights are at most 2^9: with 256 keys and |v| <= 127 every sum stays below 2^24."""
ATT_STEP = 5
"""Score differences (log2 units) are floored to multiples of 2^-5: d = 32 z + r."""
EXP2 = (131200, -2770, 23)
"""(A, B, C): 2^9 2^(-r/32) ~ (A + r (B + C r)) >> 8 for r = 0 .. 31 (within 0.54 %, 512 at r = 0)."""
LN_FRAC_MAX = 7
"""The most fractional bits of a LayerNorm output (|y| <= 127 2^-7 sigma...)."""
RECIP_BITS = 26
"""LayerNorm divides by sigma as a per-row reciprocal round(2^(26 + f + LN_BITS) / sigma) and a shift."""
MAX_KEYS = 256
"""Keys per attention (one 16 x 16 tile): the float32 bound of ``ATT_BITS``."""
ACC_MAX = (1 << 31) - 1


@contextmanager
def ieee_float32():
    """float32 matrix products in IEEE single precision (no TF32 or bf16 shortcuts) for the duration."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def mm8(a: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """(m, n) int32 = a (m, k) int8 @ wt (k, n) int8, exact. ``torch._int_mm`` where it runs; CUDA wants
    more than 16 rows (padded here); elsewhere an integer-valued float32 product (exact: every
    partial sum is below 2^24 for k <= 2048 given the bounds A_MAX and W_MAX)."""
    m = a.shape[0]
    if a.device.type == "cuda" and m <= 16:
        return mm8(torch.cat([a, a.new_zeros(17 - m, a.shape[1])]), wt)[:m]
    if a.device.type in ("cpu", "cuda"):
        return torch._int_mm(a, wt)
    with ieee_float32():
        return torch.matmul(a.float(), wt.float()).to(torch.int32)


def rshift_round(x: torch.Tensor, s: int) -> torch.Tensor:
    """round(x 2^-s), halves up, for an integer tensor and s >= 0."""
    return x if s == 0 else (x + (1 << (s - 1))) >> s


def to_int8(x: torch.Tensor, s: int) -> torch.Tensor:
    """An int32 activation at scale 2^-ACT_BITS -> int8 at scale 2^-(ACT_BITS - s), saturated."""
    return rshift_round(x, s).clamp_(-A_MAX, A_MAX).to(torch.int8)


def gelu_table(frac_in: int, frac_out: int) -> list[int]:
    """round(2^frac_out GELU(x)) saturated to +-127, for x = j 2^-frac_in - 8, j = 0 .. L - 1, up to
    the x whose GELU saturates (computed with ``math`` at export, then stored and only read)."""
    lo, top = 8 << frac_in, (A_MAX + 1) << max(0, frac_in - frac_out)
    out = []
    for j in range(lo + top):
        x = (j - lo) / 2**frac_in
        v = round(x * 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) * 2**frac_out)
        out.append(max(-A_MAX, min(A_MAX, v)))
    return out


# ---------------------------------------------------------------------------------------------
# export: float IndexTransformer -> int8 tensors


def _frac(amax: float, cap: int = 14) -> int:
    """Fractional bits of an int8 tensor whose magnitudes reach ``amax``: the most with amax 2^f <= 127."""
    if amax <= 0:
        return cap
    return int(max(0, min(cap, math.floor(math.log2(A_MAX / amax)))))


def _q_linear(w: torch.Tensor, b: torch.Tensor, f_in: int, f_out: torch.Tensor, p: str, out: dict) -> None:
    """int8 weights (|W| <= 64) with a per-output-channel exponent e (w ~ W 2^-e); the accumulator is at
    scale 2^-(f_in + e), so the output at scale 2^-f_out is (acc + B) >> (f_in + e - f_out) (a left
    shift where that is negative), B holding the bias and the rounding half."""
    w, b = w.detach().double().reshape(w.shape[0], -1), b.detach().double()
    peak = w.abs().amax(1).clamp_min(1e-30)
    e = torch.floor(torch.log2(W_MAX / peak)).clamp(-8, 30).long()
    wq = torch.round(w * torch.pow(2.0, e.double())[:, None]).clamp(-W_MAX, W_MAX)
    acc_exp = f_in + e
    shift = acc_exp - f_out.long()
    bias = torch.round(b * torch.pow(2.0, acc_exp.double()))
    bias = bias + torch.where(shift > 0, torch.pow(2.0, (shift - 1).clamp_min(0).double()), torch.zeros_like(bias))
    bound = (wq.abs().sum(1) * A_MAX + bias.abs()) * torch.pow(2.0, (-shift).clamp_min(0).double())
    if bound.max() >= ACC_MAX:
        raise ValueError(f"{p}: accumulator would not fit int32")
    out[f"{p}.w"] = wq.to(torch.int8)
    out[f"{p}.bias"] = bias.to(torch.int32)
    out[f"{p}.shift"] = shift.clamp(-31, 31).to(torch.int8)


def _folded(norm: torch.nn.LayerNorm, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear layer after a LayerNorm with the norm's scale and shift folded in: W diag(g), b + W beta."""
    g, beta = norm.weight.detach().double(), norm.bias.detach().double()
    w = w.detach().double()
    return w * g[None], b.detach().double() + w @ beta


class _Ranges:
    """Largest magnitudes seen at each quantisation point (a high quantile, so a rare outlier does
    not cost every other value its precision)."""

    def __init__(self, q: float = 0.9999) -> None:
        self.q, self.seen = q, {}

    def __call__(self, name: str, real: torch.Tensor) -> None:
        v = real.detach().abs().flatten().double()
        if v.numel() > 1 << 22:
            v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[: 1 << 22]]
        self.seen.setdefault(name, []).append(float(torch.quantile(v, self.q)) if v.numel() else 0.0)

    def amax(self, name: str) -> float:
        return float(np.max(self.seen[name]))


def _quantise(net: IndexTransformer, fr: dict[str, int]) -> dict[str, torch.Tensor]:
    """The int8 tensors of ``net`` for the fractional bits ``fr`` of every quantisation point."""
    cfg = net.config
    out: dict[str, torch.Tensor] = {"embed": _act(net.embed.weight), "mask_token": _act(net.mask_token),
                                    "pe": _act(sincos_2d(TILE, TILE, cfg.dim))}  # fmt: skip
    d, dh = cfg.dim, cfg.dim // cfg.heads
    const = lambda v, n: torch.full((n,), v, dtype=torch.long)  # noqa: E731
    for i, block in enumerate(net.local):
        p = f"local.{i}"
        w = block.conv.weight.detach().permute(0, 2, 3, 1)  # (out, dy, dx, in): the order of ``_im2col``
        g_in = fr[f"{p}.g"] + 1
        _q_linear(w, block.conv.bias, fr[f"{p}.in"], const(g_in, d), f"{p}.conv", out)
        out[f"{p}.gelu"] = torch.tensor(gelu_table(g_in, fr[f"{p}.g"]), dtype=torch.int8)
        _q_linear(block.proj.weight, block.proj.bias, fr[f"{p}.g"], const(ACT_BITS, d), f"{p}.proj", out)
        out[f"{p}.frac"] = torch.tensor([fr[f"{p}.in"], g_in, fr[f"{p}.g"]], dtype=torch.int32)
    for i, layer in enumerate(net.trunk.layers):
        p = f"layers.{i}"
        w = layer.self_attn.in_proj_weight.detach().clone()
        b = layer.self_attn.in_proj_bias.detach().clone()
        w[:d] *= math.log2(math.e) / math.sqrt(dh)  # scores in log2 units
        b[:d] *= math.log2(math.e) / math.sqrt(dh)
        w, b = _folded(layer.norm1, w, b)
        f_qkv = torch.cat([const(fr[f"{p}.{n}"], d) for n in "qkv"])
        _q_linear(w, b, fr[f"{p}.ln1"], f_qkv, f"{p}.qkv", out)
        _q_linear(layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias, fr[f"{p}.v"], const(ACT_BITS, d),
                  f"{p}.out", out)  # fmt: skip
        w, b = _folded(layer.norm2, layer.linear1.weight, layer.linear1.bias)
        g_in = fr[f"{p}.g"] + 1
        _q_linear(w, b, fr[f"{p}.ln2"], const(g_in, w.shape[0]), f"{p}.ff1", out)
        out[f"{p}.gelu"] = torch.tensor(gelu_table(g_in, fr[f"{p}.g"]), dtype=torch.int8)
        _q_linear(layer.linear2.weight, layer.linear2.bias, fr[f"{p}.g"], const(ACT_BITS, d), f"{p}.ff2", out)
        out[f"{p}.frac"] = torch.tensor([fr[f"{p}.{n}"] for n in ("ln1", "q", "k", "v", "ln2")] + [g_in, fr[f"{p}.g"]],
                                        dtype=torch.int32)  # fmt: skip
    w, b = _folded(net.norm, net.head.weight, net.head.bias)
    _q_linear(w, b, fr["norm"], const(ACT_BITS, w.shape[0]), "head", out)
    out["norm.frac"] = torch.tensor([fr["norm"]], dtype=torch.int32)
    out["ln_eps"] = torch.tensor([round(net.norm.eps * 2 ** (2 * (ACT_BITS + LN_BITS)))], dtype=torch.int64)
    out["lut.exp"] = int16_tables()["lut.exp"]
    return out


def _calibration_inputs(maps: list[tuple[torch.Tensor, int]], seed: int, task: str = "context"):
    """(indices, mask, k) as the model meets them. ``context``: each map at a random group of the
    coding order (levels 2), earlier groups visible, the rest masked. ``fill`` (packet-loss
    recovery): the holes of 16 interleaved packets each lost with a probability drawn from 10-50 %,
    at a random round of the filling (a random share of the holes already filled)."""
    from vqcodec import interleave
    from vqcodec.context import groups

    g = torch.Generator().manual_seed(seed)
    for m, k in maps:
        if task == "fill":
            assign = torch.from_numpy(interleave.assignment(*m.shape, 16).astype(np.int64))
            loss, filled = torch.rand(2, generator=g).tolist()
            lost = torch.rand(16, generator=g) < 0.1 + 0.4 * loss
            lost[int(torch.randint(0, 16, (1,), generator=g))] = True
            mask = lost[assign] & ~(torch.rand(m.shape, generator=g) < 0.8 * filled)
        else:
            grp = torch.from_numpy(groups(*m.shape, 2))
            stage = int(torch.randint(1, int(grp.max()) + 1, (1,), generator=g))
            mask = grp >= stage
        yield m.clamp(0, k - 1), mask, k


def export(net: IndexTransformer, maps: list[tuple[torch.Tensor, int]], seed: int = 0,
           rounds: int = 2, task: str = "context") -> dict[str, torch.Tensor]:  # fmt: skip
    """All-integer tensors of a trained (non-causal) ``IndexTransformer`` for ``Int8Transformer``.

    ``maps``: (h, w) index maps of training photos with their K. The fractional bits of every int8
    tensor start wide and are set from the ranges the int8 model itself meets on them, ``rounds``
    times (each round sees the previous round's quantisation upstream), on inputs shaped as
    ``task``'s (``_calibration_inputs``: the context coder's groups, or packet-loss holes)."""
    cfg = net.config
    if cfg.causal:
        raise ValueError("the int8 transformer covers bidirectional (masked) models only")
    names = [f"local.{i}.{n}" for i in range(cfg.local) for n in ("in", "g")]
    names += [f"layers.{i}.{n}" for i in range(cfg.depth) for n in ("ln1", "q", "k", "v", "ln2", "g")] + ["norm"]
    fr = dict.fromkeys(names, 3)
    for _ in range(rounds):
        model = Int8Transformer(cfg, _quantise(net, fr))
        ranges = _Ranges()
        model.observe = ranges
        for idx, mask, k in _calibration_inputs(maps, seed, task):
            model.tiled(idx, mask, k)
        fr = {n: _frac(ranges.amax(n)) for n in names}
        for n in names:  # the input of a 3x3 convolution is the residual stream at 2^-10: shifts only
            if n.endswith(".in"):
                fr[n] = min(fr[n], ACT_BITS)
            if n.endswith(("ln1", "ln2", "norm")):
                fr[n] = min(fr[n], LN_FRAC_MAX)
        for i in range(cfg.depth):  # score differences need at least ATT_STEP fractional bits
            while fr[f"layers.{i}.q"] + fr[f"layers.{i}.k"] < ATT_STEP:
                fr[f"layers.{i}.q"] += 1
    return _quantise(net, fr)


# ---------------------------------------------------------------------------------------------
# inference


class Int8Transformer(IntTransformer):
    """Integer inference of an int8-exported index-map transformer; ``forward`` gives integer logits
    at scale 2^-ACT_BITS (int-valued float64, as ``IntTransformer``), ``frequencies``,
    ``coding_logits``, ``pooled_logits`` and ``fill_soft`` are ``IntTransformer``'s. Same results
    on any device and thread count."""

    att_chunk = 1 << 18
    """Attention scores per block (elements): 1 MB, so that its elementwise steps run in cache."""
    observe = None
    """Calibration only: called with (point name, real values) before each int8 rounding."""

    def __init__(self, cfg, tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> None:
        self._configure(cfg, tensors)
        t: dict[str, torch.Tensor] = {}
        for name, v in tensors.items():
            if name.endswith(".w"):
                t[name + "t"] = v.to(torch.int8).t().contiguous()  # (in, out): _int_mm's right operand
            elif name.endswith((".bias", ".shift")):
                t[name] = v.to(torch.int32)
            elif name in ("embed", "mask_token", "pe"):
                t[name] = v.to(torch.int32)
            elif name.endswith(".gelu"):
                t[name] = v.to(torch.int8)
            elif name == "lut.exp":
                t[name] = torch.cat([v.to(torch.int64), torch.zeros(1, dtype=torch.int64)]).double()
            else:
                t[name] = v.to(torch.int64)
        self.frac = {n[: -len(".frac")]: [int(x) for x in v] for n, v in tensors.items() if n.endswith(".frac")}
        self.left = {n[: -len(".shift")] for n, v in tensors.items() if n.endswith(".shift") and bool((v < 0).any())}
        self.t = t
        self.device = torch.device("cpu")
        self.to(device)

    def _check(self, t: dict[str, torch.Tensor]) -> None:
        """Shapes and the bounds the exactness argument needs (a damaged file fails here, not later)."""
        c = self.config
        d, hid = c.dim, c.dim * c.mlp
        if max(9 * d, hid) > 1 << 11 or d % c.heads or (d // c.heads) * A_MAX * A_MAX >= 1 << 24:
            raise ValueError("int8 transformer: inner products too long to stay exact")
        lin = {"head": (self.total, d)}
        for i in range(c.local):
            lin |= {f"local.{i}.conv": (d, 9 * d), f"local.{i}.proj": (d, d)}
        for i in range(c.depth):
            lin |= {f"layers.{i}.qkv": (3 * d, d), f"layers.{i}.out": (d, d), f"layers.{i}.ff1": (hid, d),
                    f"layers.{i}.ff2": (d, hid)}  # fmt: skip
        want = {"embed": (self.total, d), "mask_token": (len(c.sizes), d), "pe": (TILE * TILE, d), "ln_eps": (1,),
                "norm.frac": (1,)}  # fmt: skip
        for p, shape in lin.items():
            want |= {f"{p}.w": shape, f"{p}.bias": (shape[0],), f"{p}.shift": (shape[0],)}
        want |= {f"local.{i}.frac": (3,) for i in range(c.local)} | {f"layers.{i}.frac": (7,) for i in range(c.depth)}
        for name, shape in want.items():
            v = t.get(name)
            if v is None or tuple(v.shape) != shape or v.dtype.is_floating_point or v.dtype == torch.bool:
                raise ValueError(f"int8 transformer: tensor {name} missing, not integer or not of shape {shape}")
        for p in lin:
            w, bias, shift = t[f"{p}.w"].long(), t[f"{p}.bias"].long(), t[f"{p}.shift"].long()
            if int(w.abs().max()) > W_MAX or int(shift.abs().max()) > 31:
                raise ValueError(f"int8 transformer: {p} out of range")
            bound = (w.abs().sum(1) * A_MAX + bias.abs()) << (-shift).clamp_min(0)
            if int(bound.max()) > ACC_MAX:
                raise ValueError(f"int8 transformer: {p} accumulator exceeds int32")
        for name in ("embed", "mask_token", "pe"):
            if int(t[name].abs().max()) > LIMIT:
                raise ValueError(f"int8 transformer: {name} out of range")
        fracs = [int(x) for n, v in t.items() if n.endswith(".frac") for x in v]
        if min(fracs) < 0 or max(fracs) > 16 or any(int(t[f"local.{i}.frac"][0]) > ACT_BITS for i in range(c.local)):
            raise ValueError("int8 transformer: fractional bits out of range")
        ln = [int(t["norm.frac"][0])] + [int(t[f"layers.{i}.frac"][j]) for i in range(c.depth) for j in (0, 4)]
        att = [int(t[f"layers.{i}.frac"][1]) + int(t[f"layers.{i}.frac"][2]) for i in range(c.depth)]
        if max(ln) > LN_FRAC_MAX or min(att) < ATT_STEP:
            raise ValueError("int8 transformer: LayerNorm or attention fractional bits out of range")
        gelus = [(f"local.{i}", 1) for i in range(c.local)] + [(f"layers.{i}", 5) for i in range(c.depth)]
        for p, j in gelus:
            g = t.get(f"{p}.gelu")
            f_in, f_out = int(t[f"{p}.frac"][j]), int(t[f"{p}.frac"][j + 1])
            if g is None or g.ndim != 1 or g.numel() != (8 << f_in) + ((A_MAX + 1) << max(0, f_in - f_out)):
                raise ValueError(f"int8 transformer: GELU table of {p} missing or of the wrong length")
            if int(g.long().abs().max()) > A_MAX:
                raise ValueError(f"int8 transformer: GELU table of {p} out of range")
        exp = t.get("lut.exp")
        if exp is None or exp.ndim != 1 or not 1 <= exp.numel() <= 1 << 20 or int(exp[0]) != 1 << 16:
            raise ValueError("int8 transformer: bad exp table")
        if int(exp.min()) < 1:
            raise ValueError("int8 transformer: bad exp table")
        if not 1 <= int(t["ln_eps"][0]) < 1 << 40:
            raise ValueError("int8 transformer: bad LayerNorm epsilon")

    # -- the operations of docs/bitstream.md, "The int8 context model" ------------------------
    def _seen(self, name: str, x: torch.Tensor, frac: int) -> None:
        if self.observe is not None:
            self.observe(name, x.double() * 2.0**-frac)

    def _acc(self, x8: torch.Tensor, p: str, rows: slice = slice(None)) -> torch.Tensor:
        """(acc + B) >> shift per output channel (a left shift where it is negative), int32."""
        t = self.t
        wt = t[f"{p}.wt"]
        if rows != slice(None):  # the head's rows of one K: a contiguous copy, made once
            key = f"{p}.wt[{rows.start}:{rows.stop}]"
            if key not in t:
                t[key] = wt[:, rows].contiguous()
            wt = t[key]
        y = mm8(x8, wt).add_(t[f"{p}.bias"][rows])
        shift = t[f"{p}.shift"][rows]
        if p in self.left:
            y = torch.where(shift < 0, y << (-shift).clamp_min(0), y >> shift.clamp_min(0))
        else:
            y >>= shift
        return y

    def _residual(self, x: torch.Tensor, x8: torch.Tensor, p: str) -> torch.Tensor:
        return (x + self._acc(x8, p)).clamp_(-LIMIT, LIMIT)

    def _gelu8(self, x8: torch.Tensor, p: str, name: str, f_in: int) -> torch.Tensor:
        """The GELU table at the accumulator's rounded value: the next layer's int8 input."""
        y = self._acc(x8, f"{p}.{name}")
        table = self.t[f"{p}.gelu"]
        lo = 8 << f_in
        self._seen(f"{p}.g", y.clamp(min=0), f_in)
        at = (y + lo).clamp_(0, table.numel() - 1).long()
        return table.expand(at.shape[0], -1).gather(1, at)  # a gather beats indexing here

    def _norm8(self, x: torch.Tensor, name: str, frac: int) -> torch.Tensor:
        """int8 LayerNorm without scale and shift (folded into the next layer): mean rounded,
        variance floored, sigma = isqrt(var 2^(2 LN_BITS) + eps), R = round(2^(26 + frac + LN_BITS) / sigma)
        per row, y = (xc R + 2^25) >> 26 (|xc R| < 2^52: int64)."""
        n = x.shape[-1]
        mu = rdiv(x.sum(-1, keepdim=True), torch.tensor(n, device=x.device))
        xc = x.long() - mu
        xd = xc.double()
        var = torch.div((xd * xd).sum(-1, keepdim=True).long(), n, rounding_mode="floor")  # < 2^48: exact
        sigma = isqrt((var << (2 * LN_BITS)) + self.t["ln_eps"])
        recip = rdiv(torch.full_like(sigma, 1 << (RECIP_BITS + frac + LN_BITS)), sigma)
        y = (xc * recip + (1 << (RECIP_BITS - 1))) >> RECIP_BITS
        self._seen(name, y, frac)
        return y.clamp_(-A_MAX, A_MAX).to(torch.int8)

    def _im2col(self, x8: torch.Tensor) -> torch.Tensor:
        """(b, h, w, c) -> (b h w, 9 c): the 3x3 neighbourhoods, zero outside, in (dy, dx, c) order."""
        b, h, w, c = x8.shape
        pad = F.pad(x8, (0, 0, 1, 1, 1, 1))
        cols = torch.cat([pad[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], -1)
        return cols.reshape(b * h * w, 9 * c)

    def _attention(self, x8: torch.Tensor, i: int, b: int, n: int, keep: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention on the int8 LayerNorm output (b n, d); with ``keep``, those query rows only.
        Returns the int8 input of the output projection, (b nq, d)."""
        d, heads = self.config.dim, self.config.heads
        dh = d // heads
        _, fq, fk, fv, *_ = self.frac[f"layers.{i}"]
        qkv = self._acc(x8, f"layers.{i}.qkv").clamp_(-A_MAX, A_MAX)
        if self.observe is not None:
            raw = self._acc(x8, f"layers.{i}.qkv")
            for j, nm in enumerate("qkv"):
                self._seen(f"layers.{i}.{nm}", raw[:, j * d : (j + 1) * d], (fq, fk, fv)[j])
        qkv = qkv.float().reshape(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
        q = qkv[0] if keep is None else qkv[0][:, :, keep]
        nq = q.shape[2]
        shift = fq + fk - ATT_STEP
        a, b1, c = EXP2
        out = torch.empty(b, heads, nq, dh, dtype=torch.float64, device=x8.device)
        chunk = max(1, self.att_chunk // (heads * n * nq))  # small blocks: the elementwise steps stay in cache
        with ieee_float32():
            for s in range(0, b, chunk):
                raw = torch.matmul(q[s : s + chunk], qkv[1][s : s + chunk].transpose(-1, -2))  # |raw| < 2^19
                dd = torch.sub(raw.amax(-1, keepdim=True), raw, out=raw).to(torch.int32)
                dd >>= shift  # score differences in log2 units at 2^-5, >= 0
                z = dd >> 5
                z.clamp_(max=10)
                dd &= 31
                e = dd * c
                e += b1
                e *= dd
                e += a
                e >>= 8
                e >>= z
                w = raw.copy_(e)  # integers <= 512, in the float32 buffer of the scores
                num = torch.matmul(w, qkv[2][s : s + chunk])  # every partial sum < 2^24
                out[s : s + chunk] = fdiv_round(num.double(), w.sum(-1, keepdim=True).double())
        return out.permute(0, 2, 1, 3).reshape(b * nq, d).to(torch.int8)

    def forward(
        self, indices: torch.Tensor, mask: torch.Tensor, k: int, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """As ``IntTransformer.forward``: integer logits (B, h, w, K) at scale 2^-ACT_BITS, as float64."""
        b, h, w = indices.shape
        grid, o = self._tokens(indices, mask, k)  # (b, h, w, d) int32
        t, d = self.t, self.config.dim
        for i in range(self.config.local):
            p = f"local.{i}"
            f_in, g_in, _ = self.frac[p]
            self._seen(f"{p}.in", grid, ACT_BITS)
            y8 = self._gelu8(self._im2col(to_int8(grid, ACT_BITS - f_in)), p, "conv", g_in)
            grid = self._residual(grid.reshape(-1, d), y8, f"{p}.proj").reshape(b, h, w, d)
        pe = t["pe"].reshape(TILE, TILE, -1)[:h, :w].reshape(1, h * w, -1)
        x = (grid.reshape(b, h * w, d) + pe).clamp_(-LIMIT, LIMIT).reshape(b * h * w, d)
        depth, n = self.config.depth, h * w
        for i in range(depth):
            p = f"layers.{i}"
            f_ln1, _, _, _, f_ln2, g_in, _ = self.frac[p]
            rows = keep if i == depth - 1 else None
            a8 = self._attention(self._norm8(x, f"{p}.ln1", f_ln1), i, b, n, rows)
            if rows is not None:
                x = x.reshape(b, n, d)[:, rows].reshape(-1, d)
            x = self._residual(x, a8, f"{p}.out")
            f8 = self._gelu8(self._norm8(x, f"{p}.ln2", f_ln2), p, "ff1", g_in)
            x = self._residual(x, f8, f"{p}.ff2")
        logits = self._acc(self._norm8(x, "norm", self.frac["norm"][0]), "head", slice(o, o + k))
        logits = logits.clamp_(-LIMIT, LIMIT).double()
        return logits.reshape(b, h, w, k) if keep is None else logits.reshape(b, -1, k)

    __call__ = forward
