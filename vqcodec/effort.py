"""Encoder effort: search the index map against the decoder, not just the nearest code (``--effort``).

Why: the nearest code to each latent is what the decoder was trained on, not the map that makes
the best picture for the bits. With the shipped decoder frozen, the encoder can spend time on a
rate-distortion search (Yang et al., "Improving Inference for Neural Image Compression", NeurIPS
2020, do this for continuous latents): the files stay ordinary files of the existing coding
modes, so every decoder reads them, and nothing is retrained.

The search (``search``) optimises the pre-quantisation latent ``u`` of the whole map:

- **distortion** through the frozen decoder, with the training losses only: LPIPS-VGG (all
  five taps) + a little L1 (the L1 of 16x16-block means, colour and layout, is there too, at
  weight 0: on held-out photos it cost LPIPS at K=8 and the block colour error improved without
  it). Never LPIPS-Alex or DISTS, the metrics the project reports;
- the forward pass decodes the *hard* map (each position's nearest code to ``u``), the gradient
  reaches ``u`` straight through the quantiser, so every step measures the loss of a real map;
- **rate** from the coding mode's own model: each position's cost in bits of every code, read off
  the context model's coding probabilities for the current map (the same numbers the range
  coder uses, recomputed for each new map, so a map's bits are exact), or the static table. A soft assignment of ``u`` to the
  codes makes it differentiable;
- ``lambda`` (the price of a bit) follows the byte budget by dual ascent: up when the map's
  estimated bits exceed it, down when below;
- the result is the best map seen (lowest distortion within the budget), not the last one
  (except at the one-step level, whose last map is taken without a decoder pass to measure it:
  on the held-out photos one step lowered the distortion of every map that fitted the budget); its
  exact size is then checked by packing it, and if it is over the budget, changed positions are
  reverted to the nearest code (cheapest first) until it fits, so a file never grows: by default
  the budget is the effort-1 file's size.

Big images run in tiles of the map with a halo, each tile searched with the rest fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec import heap
from vqcodec.options import check_effort
from vqcodec.perceptual import _unit

TILE = 48
"""Side, in map positions, of a tile's core (768 pixels): a Kodak photo is one tile."""
HALO = 3
"""Map positions of context around a tile's core (48 pixels; the decoder's reach from a position)."""
MIN_SIDE = 32
"""Pixels a tile's core needs on each side to be searched: LPIPS-VGG's deepest tap sees the image
at 1/16 scale, and a sliver of a few pixels says little about a picture. Smaller images and
slivers keep their nearest codes."""


@dataclass(frozen=True)
class Settings:
    """The search's knobs, chosen on held-out training photos (never Kodak): benchmarks/effort.py."""

    steps: int
    lr: float = 0.02
    tau: float = 0.05  # temperature of the soft assignment behind the rate term (cosine similarities)
    l1: float = 0.1  # held-out: L1 0.5 + block colour 1.0 (the training mix) gained nothing at K=8
    colour: float = 0.0  # and no more at 64 and 1024; the block colour error improves without them
    refresh: int = 1  # steps between rate-table refreshes (1: every map's bits are exact)
    eta: float = 10.0  # dual-ascent rate of lambda (2: the maps stayed 2-6 % under the budget)
    lam: float = 0.01  # starting price of a bit per position, in loss units
    slack: float = 0.1  # a map this much over the bits budget may still be chosen (``fit_budget`` trims it)
    judge_last: bool = True  # measure the last step's map through the decoder before preferring it


LEVELS: dict[int, Settings] = {  # one per level 1 .. MAX_EFFORT
    1: Settings(steps=0),  # the nearest code: today's encoder, byte for byte
    2: Settings(steps=1, lr=0.03, judge_last=False),  # one step, 4-5 s for a Kodak photo
    3: Settings(steps=2, lr=0.05),
    4: Settings(steps=4, lr=0.04),
    5: Settings(steps=8, lr=0.025),
}
"""What each effort level spends: gradient steps through the decoder (a step, its decoder and
LPIPS-VGG passes forward and back, 2-3 s for a 768x512 photo on 2 cores) and their step size,
chosen on held-out photos. Level 2 (one step, its map taken unmeasured) is the middle level of
0.3.0: 40-50 % of the top level's LPIPS gain at K=64 in 4-5 s; the two-step level it
replaced is now level 3, and the four-step one level 4. The top level took nine steps until
2026-12-08; on the held-out photos eight gave the same gain (K=64 LPIPS-Alex -0.0211 against
-0.0205, seven steps at 0.03 -0.0156) in 3 s less, which keeps it within 30 s on a CPU without
AMX."""


def settings(effort: int) -> Settings:
    return LEVELS[check_effort(effort)]


# ---------------------------------------------------------------- rate
RateTable = Callable[[np.ndarray], torch.Tensor]
"""(h, w) index map -> (h*w, K) bits of every code at every position, given the map's context."""


def context_rate(net, k: int, levels: int, paired: bool = False) -> RateTable:
    """Bits from a context model: per group, the coding probabilities given the earlier groups of
    the map (exactly what ``context.encode_context`` codes with)."""
    from vqcodec import context

    def table(idx: np.ndarray) -> torch.Tensor:
        h, w = idx.shape
        out = np.zeros((h, w, k), dtype=np.float32)
        for sel, probs in context.plane_probabilities(net, idx, k, levels, paired):
            out[sel] = -np.log2(probs)
        return torch.from_numpy(out).view(-1, k)

    return table


def static_rate(probabilities: np.ndarray) -> RateTable:
    """Bits from a static table: the same cost of each code everywhere."""
    bits = torch.from_numpy(-np.log2(np.asarray(probabilities, dtype=np.float64))).float()

    def table(idx: np.ndarray) -> torch.Tensor:
        return bits[None].expand(idx.size, -1)

    return table


# ---------------------------------------------------------------- distortion
class Distortion(torch.nn.Module):
    """LPIPS-VGG + L1 + block-colour L1 against a fixed target: the training losses (``loss_weights``)."""

    def __init__(self, target: torch.Tensor, l1: float, colour: float) -> None:
        super().__init__()
        from vqcodec import loss_weights

        self.lpips = loss_weights.lpips_vgg()
        self.l1, self.colour = l1, colour
        self.target = target
        self.blocks = F.avg_pool2d(target, 16)
        with torch.no_grad():
            self.units = [_unit(f) for f in self._feats(target)]  # the target's, computed once

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        """VGG features in the autocast precision (bf16 where native: half the time of float32,
        and the search needs directions, not the fourth digit)."""
        with _autocast():
            return self.lpips.feats(x.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.new_zeros((), dtype=torch.float32)
        with _autocast():  # LPIPS's distance, with the target's unit features cached
            for f, u, w in zip(self._feats(x), self.units, self.lpips.lins, strict=True):
                d = d + F.conv2d((_unit(f) - u) ** 2, w.to(f.dtype)).float().mean()
        x = x.float()
        d = d + self.l1 * (x - self.target).abs().mean()
        return d + self.colour * (F.avg_pool2d(x, 16) - self.blocks).abs().mean()


def _autocast():
    from vqcodec.nets.autoencoder import native_bf16

    if native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ---------------------------------------------------------------- search
def _tiles(h: int, w: int) -> list[tuple[slice, slice, slice, slice]]:
    """(rows, cols) of each tile's core and of the window (core + halo) it decodes."""
    out = []
    for r0 in range(0, h, TILE):
        for c0 in range(0, w, TILE):
            r1, c1 = min(h, r0 + TILE), min(w, c0 + TILE)
            wr = slice(max(0, r0 - HALO), min(h, r1 + HALO))
            wc = slice(max(0, c0 - HALO), min(w, c1 + HALO))
            out.append((slice(r0, r1), slice(c0, c1), wr, wc))
    return out


def search(model, z: torch.Tensor, codes: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
           q: np.ndarray, rate: RateTable, budget: float, s: Settings) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The index map (h, w) of lowest distortion whose estimated bits stay within ``budget`` times
    those of the nearest-code map (tile by tile).

    ``z``: the encoder's latent (1, d, h, w); ``codes``: the K-book as used for lookup (K, d);
    ``image``: the padded target in [-1, 1] (1, 3, H, W); ``size``: (width, height) of the
    original image (distortion is measured there only, never on the padding); ``q``: the
    nearest-code map (h, w) the search starts from. Returns the map and, per position, how
    firmly the search chose its code over the nearest one (the cosine margin of the latent:
    ``fit_budget`` puts the weakest changes back first)."""
    from vqcodec.nets.quantizers import l2norm

    _, d, h, w = z.shape
    stride = image.shape[-1] // w
    margin = np.zeros((h, w), dtype=np.float32)
    if s.steps <= 0:
        return q, margin
    table = rate(q)
    u_all = l2norm(z.detach().float(), 1)
    out = q.copy()
    tiles = _tiles(h, w)
    for rows, cols, wr, wc in tiles:
        pos = torch.arange(h * w).view(h, w)[wr, wc].reshape(-1)
        core = torch.zeros(h, w, dtype=torch.bool)
        core[rows, cols] = True
        core_w = core[wr, wc]  # (th, tw) the core inside the window
        th, tw = core_w.shape
        # the pixels the core decodes, cropped to the image (no distortion on the padding)
        py0, px0 = wr.start * stride, wc.start * stride
        y0 = (rows.start - wr.start) * stride
        x0 = (cols.start - wc.start) * stride
        y1 = min(y0 + (rows.stop - rows.start) * stride, size[1] - py0)
        x1 = min(x0 + (cols.stop - cols.start) * stride, size[0] - px0)
        target = image[:, :, py0 + y0 : py0 + y1, px0 + x0 : px0 + x1]
        if min(y1 - y0, x1 - x0) < MIN_SIDE:  # padding, or too small to measure: the nearest codes stay
            continue
        loss_fn = Distortion(target, s.l1, s.colour)
        fixed = F.embedding(torch.from_numpy(out[wr, wc]).reshape(-1), codes)  # neighbours' codes
        u = u_all[:, :, wr, wc].clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=s.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.steps, s.lr * 0.1)
        keep = core_w.reshape(-1)
        allowed = budget * float(table[pos[keep], torch.from_numpy(q[wr, wc]).reshape(-1)[keep]].sum())
        lam = s.lam
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        q_win = torch.from_numpy(q[wr, wc]).reshape(-1)
        for step in range(s.steps + 1):
            un = l2norm(u, 1)
            flat = un.permute(0, 2, 3, 1).reshape(-1, d)
            sims = flat @ codes.t()
            hard = sims.argmax(1)
            hard = torch.where(keep, hard, torch.from_numpy(out[wr, wc]).reshape(-1))
            if len(tiles) == 1 and step and step % s.refresh == 0:
                table = rate(hard.view(h, w).numpy())  # one tile: the window is the map; its bits exact
            last = step == s.steps
            bits = float(table[pos[keep], hard[keep]].sum())
            if last and not s.judge_last:  # taken unmeasured if it fits: no decoder pass for it
                dist, score = None, -math.inf
            else:
                zq = torch.where(keep[:, None], codes[hard], fixed).view(1, th, tw, d).permute(0, 3, 1, 2)
                zst = un + (zq - un).detach()
                with torch.set_grad_enabled(not last):  # the last map is only measured
                    with _autocast():
                        x = model.decode_latent(zst.contiguous(memory_format=model.memory_format))
                    dist = loss_fn(x.float()[:, :, y0:y1, x0:x1])
                score = dist.item()
            if bits <= allowed * (1 + s.slack) and (best is None or score < best[0]):
                with torch.no_grad():
                    firm = sims.gather(1, hard[:, None]) - sims.gather(1, q_win[:, None])
                best = (score, hard.view(th, tw).numpy().copy(), firm.view(th, tw).numpy())
            if last:
                break
            soft = torch.softmax(sims[keep] / s.tau, 1)
            r = (soft * table[pos[keep]]).sum() / max(int(keep.sum()), 1)
            opt.zero_grad()
            (dist + lam * r).backward()
            opt.step()
            sched.step()
            lam *= math.exp(s.eta * (bits / max(allowed, 1e-9) - 1))
        if best is not None:
            shape = (rows.stop - rows.start, cols.stop - cols.start)
            out[rows, cols] = best[1][core_w.numpy()].reshape(shape)
            margin[rows, cols] = best[2][core_w.numpy()].reshape(shape)
    return out, margin


def fit_budget(q0: np.ndarray, q: np.ndarray, rate: RateTable, size_of: Callable[[np.ndarray], int],
               max_bytes: int, margin: np.ndarray | None = None, rounds: int = 6) -> tuple[np.ndarray, int]:  # fmt: skip
    """``q`` changed back towards ``q0`` until its file is at most ``max_bytes``: the changes that
    cost the most bits for the least conviction (``margin``, from ``search``) go back first.
    Returns (map, positions reverted); ``q0`` itself when nothing else fits (it is the caller's
    job that ``q0`` fits)."""
    reverted = 0
    q = q.copy()
    firm = np.ones(q.shape, np.float32) if margin is None else np.asarray(margin, np.float32)
    for _ in range(rounds):
        over = size_of(q) - max_bytes
        if over <= 0:
            return q, reverted
        changed = np.flatnonzero(q.ravel() != q0.ravel())
        if not changed.size:
            break
        t = rate(q)
        flat, flat0 = torch.from_numpy(q.ravel()), torch.from_numpy(q0.ravel())
        ch = torch.from_numpy(changed)
        saving = (t[ch, flat[ch]] - t[ch, flat0[ch]]).numpy()
        order = np.argsort(-np.maximum(saving, 0) / (firm.ravel()[changed] + 1e-3), kind="stable")
        need = 8 * over + 2  # bits to shed (estimates: the next round checks the real size)
        cum = np.cumsum(np.maximum(saving[order], 0))
        n = int(np.searchsorted(cum, need)) + 1
        if cum.size == 0 or cum[-1] <= 0:
            n = changed.size
        back = changed[order[:n]]
        q.reshape(-1)[back] = q0.reshape(-1)[back]
        reverted += len(back)
    if size_of(q) <= max_bytes:
        return q, reverted
    return q0.copy(), int((q != q0).sum()) + reverted


def improve(model, z: torch.Tensor, codes: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
            q0: np.ndarray, rate: RateTable, size_of: Callable[[np.ndarray], int], max_bytes: int,
            effort: int) -> np.ndarray:  # fmt: skip
    """The searched map for ``effort`` whose file (``size_of``) is at most ``max_bytes``; ``q0``
    (the nearest-code map, whose file the caller has checked) when the search finds nothing
    better that fits."""
    s = settings(effort)
    if s.steps <= 0:
        return q0
    ratio = max(max_bytes, 1) / max(size_of(q0), 1)
    with heap.kept():  # the full-resolution activations reused, not mapped anew (vqcodec.heap)
        q, margin = search(model, z, codes, image, size, q0, rate, ratio, s)
    return fit_budget(q0, q, rate, size_of, max_bytes, margin)[0]
