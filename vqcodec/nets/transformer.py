"""A bidirectional index-map transformer: p(index at masked positions | all visible indices).

One network serves every codebook size: each K has its own input embedding table and output head
(rows for K = 8 ... 1024 add up to 2040), the trunk is shared. Positions use 2-D sinusoidal
encodings, so any map size works; inference runs on 16x16 tiles, the training crop (``tiled``).

Uses: lost-index recovery (MaskGIT-style iterative filling: predict all holes, keep the most
confident, repeat), and, with a group order, the context model of the entropy coder.

With ``causal=True`` the same network is the paper's autoregressive model instead: raster order,
each position sees only the positions before it (lost ones as a "lost" token), and predicts its
own index from them (the input at step t is the token of step t-1 plus the position of step t).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

TILE = 16  # inference tile side (index positions): the training crop size
BAND_TILES = 256
"""Tiles per batch of the context coder on big maps: 256 tiles of 16x16 = a 4096x4096 photo, the
largest the old pixel limit let through, so every file made before bands existed is still coded
in one batch, bit for bit as before."""
PRIOR_WEIGHT = 0.3
"""Weight of a second model's log-probabilities in ``fill``'s product of experts. On the 8 held-out
training photos (K=64, 30 % loss, LPIPS-VGG rise, never Kodak) 0.3 beat 0.5 and none with the
first recovery models (0.1.0, 2026-11); with the annealed ``fill`` (22327 steps) it no longer helps (0.0077 vs 0.0076
without, 6 loss patterns), so the codec's ``masked`` runs ``fill`` alone. Kept for that comparison
(``benchmarks/recovery_holdout.py``), the next retrained pair may tip it back."""


@dataclass(frozen=True)
class TransformerConfig:
    sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    dim: int = 256
    depth: int = 4
    heads: int = 8
    mlp: int = 4
    causal: bool = False
    local: int = 0  # 3x3 convolution blocks on the token grid before the attention trunk

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def sincos_2d(h: int, w: int, dim: int, device=None, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(h*w, dim) fixed 2-D sinusoidal position encodings (half the channels per axis).

    ``offset`` shifts the grid: training on small crops at random offsets shows the network the
    absolute positions of whole images, so it learns not to rely on them."""
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device) / quarter)
    ys = (torch.arange(h, device=device).float() + offset[0])[:, None] * freq[None]
    xs = (torch.arange(w, device=device).float() + offset[1])[:, None] * freq[None]
    pe_y = torch.cat([ys.sin(), ys.cos()], 1)[:, None, :].expand(h, w, 2 * quarter)
    pe_x = torch.cat([xs.sin(), xs.cos()], 1)[None, :, :].expand(h, w, 2 * quarter)
    pe = torch.cat([pe_y, pe_x], -1).reshape(h * w, 4 * quarter)
    return F.pad(pe, (0, dim - 4 * quarter))


class LocalMix(nn.Module):
    """A 3x3 convolution block on the (B, dim, h, w) token grid: neighbour features from the first
    step, which attention alone learns slowly on a few CPU hours of training.

    ``causal``: the kernel sees only the positions strictly before the centre in raster order
    (row above, left neighbour) and the block has no residual, so feature t never holds token t.
    """

    def __init__(self, dim: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.proj = nn.Conv2d(dim, dim, 1)
        if causal:
            keep = torch.zeros(1, 1, 3, 3)
            keep[..., 0, :] = 1
            keep[..., 1, 0] = 1
            self.register_buffer("keep", keep, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight * self.keep if self.causal else self.conv.weight
        y = self.proj(F.gelu(F.conv2d(x, w, self.conv.bias, padding=1)))
        return y if self.causal else x + y


class IndexTransformer(nn.Module):
    """Masked-token transformer over (B, h, w) index maps of one codebook size K."""

    def __init__(self, cfg: TransformerConfig = TransformerConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.offsets = dict(zip(cfg.sizes, itertools.accumulate(cfg.sizes, initial=0), strict=False))
        total = sum(cfg.sizes)
        self.embed = nn.Embedding(total, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(len(cfg.sizes), cfg.dim))
        if cfg.causal:  # start-of-map token, one per K
            self.bos = nn.Parameter(torch.zeros(len(cfg.sizes), cfg.dim))
            nn.init.normal_(self.bos, std=0.02)
        n_local = min(cfg.local, 1) if cfg.causal else cfg.local
        self.local = nn.ModuleList(LocalMix(cfg.dim, cfg.causal) for _ in range(n_local))
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.dim * cfg.mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)  # fmt: skip
        self.trunk = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, total)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, indices: torch.Tensor, mask: torch.Tensor, k: int, offset: tuple[int, int] = (0, 0)
    ) -> torch.Tensor:
        """Logits (B, h, w, K) for every position; ``mask`` (B, h, w) True where the index is unknown."""
        if k not in self.offsets:
            raise ValueError(f"K={k} not among the transformer's sizes {self.config.sizes}")
        b, h, w = indices.shape
        o = self.offsets[k]
        tok = self.embed(indices.clamp(0, k - 1) + o)
        slot = self.config.sizes.index(k)
        tok = torch.where(mask[..., None], self.mask_token[slot].expand_as(tok), tok)
        grid = tok.permute(0, 3, 1, 2)
        for block in self.local:
            grid = block(grid)
        local = grid.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        tok = tok.reshape(b, h * w, -1)
        attn_mask = None
        if self.config.causal:  # shift right: step t sees tokens < t and predicts token t
            tok = torch.cat([self.bos[slot].expand(b, 1, -1), tok[:, :-1]], 1)
            attn_mask = nn.Transformer.generate_square_subsequent_mask(h * w, device=indices.device)
            if self.local:
                tok = tok + local  # features of the tokens before t only (masked kernel)
        elif self.local:
            tok = local
        x = tok + sincos_2d(h, w, self.config.dim, indices.device, offset)[None]
        x = self.norm(self.trunk(x, mask=attn_mask, is_causal=attn_mask is not None))
        logits = F.linear(x, self.head.weight[o : o + k], self.head.bias[o : o + k])
        return logits.reshape(b, h, w, k)

    def tiled(self, indices: torch.Tensor, mask: torch.Tensor, k: int, tile: int = TILE,
              rows: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
        """Logits (h, w, K) of one (h, w) map, computed on ``tile`` x ``tile`` tiles in one batch.

        The networks are trained on 16x16 crops; whole-image attention over a 768x512 photo's
        1536 positions costs ~3x more (attention is most of the time) and is out of the training
        distribution. Padding positions are masked (unknown), like positions not yet decoded.
        ``rows`` (multiples of ``tile``, from ``bands``): only the logits of those map rows, from
        their tiles alone, so that a big map's logits need not exist all at once.
        """
        h, w = indices.shape
        th, tw = -(-h // tile), -(-w // tile)
        idx = F.pad(indices, (0, tw * tile - w, 0, th * tile - h))
        msk = F.pad(mask, (0, tw * tile - w, 0, th * tile - h), value=True)
        r0, r1 = (0, th * tile) if rows is None else (rows[0], min(rows[1], th * tile))
        idx, msk, th = idx[r0:r1], msk[r0:r1], (r1 - r0) // tile
        split = lambda t: t.reshape(th, tile, tw, tile).permute(0, 2, 1, 3).reshape(th * tw, tile, tile)  # noqa: E731
        logits = self.forward(split(idx), split(msk), k)
        logits = logits.reshape(th, tw, tile, tile, k).permute(0, 2, 1, 3, 4).reshape(th * tile, tw * tile, k)
        return logits[: min(h, r1) - r0, :w]

    @staticmethod
    def bands(h: int, w: int, tile: int = TILE, max_tiles: int = BAND_TILES) -> list[tuple[int, int]]:
        """Map row ranges for ``tiled(rows=...)``, whole tile rows of at most ``max_tiles`` tiles
        each (at least one tile row). A map of up to ``max_tiles`` tiles is one band, one batch."""
        th, tw = -(-h // tile), -(-w // tile)
        per = max(1, max_tiles // tw) if th * tw > max_tiles else th
        return [(r * tile, min(th, r + per) * tile) for r in range(0, th, per)]

    def overlapped_log_probs(self, indices: torch.Tensor, mask: torch.Tensor, k: int, tile: int = TILE) -> torch.Tensor:
        """Log-probabilities (h, w, K) of one (h, w) map from tiles overlapping by half, pooled.

        On ``tiled``'s disjoint tiles a hole at a tile's edge sees no context across it, though the
        received indices are right there; here each position's prediction is the weighted
        geometric mean over every tile it lies in, weighted by how far inside the tile it sits
        (a pyramid: 1 at a tile's edge, tile/2 at its centre), so the well-surrounded predictions
        dominate (a causal model's context grows row by row, so its rows weigh 1 ... tile instead).
        Still 16x16 inputs, as trained; about 2.5x the tiles of a 768x512 map.
        Recovery only: the context coder keeps ``tiled`` (its bitstreams must not change).
        """
        h, w = indices.shape
        hp, wp = max(h, tile), max(w, tile)
        idx = F.pad(indices, (0, wp - w, 0, hp - h))
        msk = F.pad(mask, (0, wp - w, 0, hp - h), value=True)
        starts = lambda n: sorted({*range(0, n - tile, tile // 2), n - tile})  # noqa: E731
        corners = [(y, x) for y in starts(hp) for x in starts(wp)]
        logp = self.forward(
            torch.stack([idx[y : y + tile, x : x + tile] for y, x in corners]),
            torch.stack([msk[y : y + tile, x : x + tile] for y, x in corners]),
            k,
        ).log_softmax(-1)
        ramp = torch.minimum(torch.arange(tile), torch.arange(tile).flip(0)).float() + 1
        rows = torch.arange(tile).float() + 1 if self.config.causal else ramp  # causal: context grows down a tile
        weight = rows[:, None] * ramp[None, :]
        acc, total = torch.zeros(hp, wp, k), torch.zeros(hp, wp, 1)
        for (y, x), lp in zip(corners, logp, strict=True):
            acc[y : y + tile, x : x + tile] += weight[..., None] * lp
            total[y : y + tile, x : x + tile] += weight[..., None]
        return (acc / total).log_softmax(-1)[:h, :w]

    @torch.inference_mode()
    def fill(self, indices: torch.Tensor, missing: torch.Tensor, k: int, steps: int = 6,
             codes: torch.Tensor | None = None, prior: torch.Tensor | None = None, overlap: bool = True) -> torch.Tensor:  # fmt: skip
        """MaskGIT-style iterative filling of ``missing`` (h, w) holes of one (h, w) map.

        Each round predicts every remaining hole and keeps the most confident share
        (cosine schedule), so later predictions see earlier ones. Deterministic. With ``codes``
        (the K-book's l2-normalised code vectors) a hole gets the code nearest the
        probability-weighted mean code vector, a minimum-distortion guess in latent space, instead
        of the single likeliest index, which costs more when the model is unsure. ``prior``:
        (h, w, K) log-probabilities of a second model (the ``ar`` transformer's ``raster_log_probs``),
        multiplied in as a product of experts (weighted geometric mean, ``PRIOR_WEIGHT``).
        ``overlap``: predictions from half-overlapping tiles (``overlapped_log_probs``), else from
        ``tiled``'s disjoint ones.
        """
        return self._fill(indices, missing, k, steps, codes, prior, overlap)[0]

    @torch.inference_mode()
    def fill_soft(self, indices: torch.Tensor, missing: torch.Tensor, k: int, codes: torch.Tensor,
                  steps: int = 6, prior: torch.Tensor | None = None, overlap: bool = True,
                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Like ``fill`` with ``codes``, and also the (h, w, d) expected code vectors of the holes.

        The decoder is given the probability-weighted mean code vector itself rather than the code
        nearest to it, and not scaled back to unit length: when the model hesitates between
        dissimilar codes the blend is shorter and sits between them, and the decoder renders a
        quieter in-between patch rather than a confident wrong texture. (Held-out training photos,
        K=64, 30 % loss, LPIPS-VGG rise over the loss-free decode with the shared model: unit-length
        mean 0.0145, plain mean 0.0119; ``neighbour`` 0.0191; benchmarks/recovery_holdout.py.) The returned
        indices are the snapped ones, fed back as context between rounds and reported to the caller.
        """
        return self._fill(indices, missing, k, steps, codes, prior, overlap, temperature)

    def _fill(self, indices: torch.Tensor, missing: torch.Tensor, k: int, steps: int, codes: torch.Tensor | None,
              prior: torch.Tensor | None = None, overlap: bool = True,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        idx = indices.clone()[None]
        miss = missing.clone()[None]
        total = int(miss.sum())
        soft = None if codes is None else torch.zeros(idx.numel(), codes.shape[1])
        for step in range(steps):
            left = int(miss.sum())
            if left == 0:
                break
            if overlap:
                logp = self.overlapped_log_probs(idx[0], miss[0], k)[None]
            else:
                logp = self.tiled(idx[0], miss[0], k)[None].log_softmax(-1)
            if prior is not None:  # product of experts: a weighted geometric mean of the two models
                logp = (1 - PRIOR_WEIGHT) * logp + PRIOR_WEIGHT * prior[None]
            probs = logp.softmax(-1)
            prob, pred = probs.max(-1)
            if codes is not None:  # the code nearest the expected code vector, not the likeliest index
                mean = probs @ codes
                pred = (mean @ codes.t()).argmax(-1)
                if temperature != 1.0:  # the decoder's blend only: the index map stays the same
                    mean = (logp / temperature).softmax(-1) @ codes
            keep_left = math.floor(total * math.cos(math.pi / 2 * (step + 1) / steps))
            n_fill = max(1, left - keep_left) if step < steps - 1 else left
            conf = prob.masked_fill(~miss, -1.0).flatten()
            chosen = conf.topk(n_fill).indices
            flat_idx, flat_miss, flat_pred = idx.flatten(), miss.flatten(), pred.flatten()
            flat_idx[chosen] = flat_pred[chosen]
            flat_miss[chosen] = False
            if soft is not None:
                soft[chosen] = mean.reshape(-1, codes.shape[1])[chosen]
            idx, miss = flat_idx.view_as(idx), flat_miss.view_as(miss)
        h, w = indices.shape
        return idx[0], None if soft is None else soft.view(h, w, -1)

    @torch.inference_mode()
    def predict_raster(self, indices: torch.Tensor, missing: torch.Tensor, k: int,
                       codes: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Causal models: fill ``missing`` (h, w) holes from the indices before each hole in raster
        order (within its 16x16 tile, as trained), earlier holes marked lost, as trained: one pass
        for all holes. Deterministic. ``codes``: as in ``fill``."""
        return self.predict_raster_soft(indices, missing, k, codes)[0]

    @torch.inference_mode()
    def predict_raster_soft(self, indices: torch.Tensor, missing: torch.Tensor, k: int,
                            codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """``predict_raster``, plus the (h, w, d) expected code vectors with ``codes`` (see ``fill_soft``)."""
        logp = self.raster_log_probs(indices, missing, k)
        if codes is None:
            return torch.where(missing, logp.argmax(-1), indices), None
        mean = logp.softmax(-1) @ codes  # the plain expected vector, as in ``fill_soft``
        pred = (mean @ codes.t()).argmax(-1)
        return torch.where(missing, pred, indices), mean * missing[..., None]

    @torch.inference_mode()
    def raster_log_probs(self, indices: torch.Tensor, missing: torch.Tensor, k: int,
                         overlap: bool = False) -> torch.Tensor:  # fmt: skip
        """Causal models: (h, w, K) log-probabilities of every position given the indices before it
        in raster order (within its tile), ``missing`` ones marked lost. One pass (``overlap``: on
        half-overlapping tiles, see ``overlapped_log_probs``)."""
        if not self.config.causal:
            raise ValueError("raster-order prediction needs a causal transformer")
        if overlap:
            return self.overlapped_log_probs(indices, missing, k)
        return self.tiled(indices, missing, k).log_softmax(-1)
