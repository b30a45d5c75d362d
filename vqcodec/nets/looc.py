"""LooC: a low-dimensional codebook shared by the m sub-vectors of every latent (compositional VQ).

Paper: "LooC: Effective Low-Dimensional Codebook for Compositional Vector Quantization"
(``../shared/papers/looc-compositional-vq.txt``). Each d-dimensional latent is cut into ``groups``
sub-vectors of d/groups dimensions; one small codebook (K, d/groups) quantizes all of them with
the same parameter-free nearest-neighbour lookup, and the quantized latent is their concatenation:
K**groups combinations from K*d/groups parameters. Dead codes are re-seeded from recent
sub-vectors (the paper follows CVQ's feature anchors).

Extrapolation-by-interpolation (``extrapolate=True``): the latent map is upsampled 2x (bilinear),
every position of the 2x map is quantized, and the quantized map is average-pooled back to the
original size. In a codec the decoder needs all four quantized sub-positions, so the index map
carries ``4 * groups`` planes per latent position (space-to-depth of the 2x map): the option
quadruples the rate at a given K. It can be on at training and on or off at test time (the
weights are the same; ``m`` changes).

Data flow::

    z (B,d,h,w) -> l2-normalise over d (``normalize``) -> [2x bilinear] -> split in groups
      -> nearest code (Euclidean) -> indices (B, groups[*4], h, w)
    indices -> codes -> concatenate -> [average-pool 2x2] -> z_q (B,d,h,w)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.nets.quantizers import l2norm, record_usage, reseed_dead_codes, straight_through


def nearest_euclidean(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(N, d) vectors, (K, d) codes -> (N,) index of the nearest code (first one on ties)."""
    dist = (x**2).sum(1, keepdim=True) - 2 * x @ codes.t() + (codes**2).sum(1)[None]
    return dist.argmin(dim=1)


def space_to_depth(idx: torch.Tensor) -> torch.Tensor:
    """(B, c, 2h, 2w) -> (B, 4c, h, w); plane 4*i + 2*dy + dx holds sub-position (dy, dx) of plane i."""
    b, c, hh, ww = idx.shape
    return idx.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, hh // 2, ww // 2)


def depth_to_space(idx: torch.Tensor) -> torch.Tensor:
    """Inverse of ``space_to_depth``."""
    b, c4, h, w = idx.shape
    return idx.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)


class LoocVQ(nn.Module):
    """Compositional VQ with one low-dimensional codebook shared by ``groups`` sub-vectors.

    Args:
        codebook_size: K, codes in the shared book.
        dim: latent channels d (a multiple of ``groups``).
        groups: sub-vectors per latent (the paper's m); code dimension d / groups.
        extrapolate: extrapolation-by-interpolation (2x bilinear up, quantize, 2x2 average-pool).
        beta: commitment weight.
        normalize: l2-normalise each whole latent before splitting (keeps the latent on the scale
            a cosine-VQ model's ``post_quant_conv`` was trained on); the lookup is Euclidean.

    ``m`` (index planes per latent position) is ``groups``, or ``4 * groups`` when extrapolating.
    """

    plane_cosine = False  # sub-vectors are compared by Euclidean distance
    part_cosine = False

    def __init__(self, codebook_size: int = 256, dim: int = 16, groups: int = 2, extrapolate: bool = False,
                 beta: float = 0.25, normalize: bool = True) -> None:  # fmt: skip
        super().__init__()
        if codebook_size < 2 or groups < 1 or dim < 1 or dim % groups:
            raise ValueError(f"LooC needs codebook_size >= 2 and dim ({dim}) a multiple of groups ({groups})")
        self.codebook_size = codebook_size
        self.dim = dim
        self.groups = groups
        self.sub = dim // groups
        self.extrapolate = extrapolate
        self.m = groups * (4 if extrapolate else 1)
        self.beta = beta
        self.normalize = normalize
        self.cosine = False  # the codec's recovery compares codes by Euclidean distance
        self.embedding = nn.Embedding(codebook_size, self.sub)
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)
        self.register_buffer("usage", torch.zeros(codebook_size))

    def codes(self, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """The (K, d/groups) shared book (``codebook`` replaces it, e.g. a K-means-reduced one)."""
        return self.embedding.weight if codebook is None else codebook

    def plane_codes(self, codebook: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The book of each index plane (all planes share one)."""
        return [self.codes(codebook)] * self.m

    def _prep(self, z: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            z = l2norm(z, dim=1)
        if self.extrapolate:
            z = F.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False)
        return z

    def _split(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, H, W) -> (B*H*W*groups, d/groups) sub-vectors."""
        return z.permute(0, 2, 3, 1).reshape(-1, self.sub)

    def _planes(self, flat_idx: torch.Tensor, b: int, hh: int, ww: int) -> torch.Tensor:
        idx = flat_idx.view(b, hh, ww, self.groups).permute(0, 3, 1, 2)
        return space_to_depth(idx) if self.extrapolate else idx.contiguous()

    def _assemble(self, q: torch.Tensor, b: int, hh: int, ww: int) -> torch.Tensor:
        """(B*H*W*groups, d/groups) code vectors -> (B, d, h, w) (pooled back when extrapolating)."""
        z = q.reshape(b, hh, ww, self.dim).permute(0, 3, 1, 2).contiguous()
        return F.avg_pool2d(z, 2) if self.extrapolate else z

    def quantize(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d, h, w) latents -> (B, m, h, w) int64 indices."""
        zz = self._prep(z)
        b, _, hh, ww = zz.shape
        return self._planes(nearest_euclidean(self._split(zz), self.codes(codebook)), b, hh, ww)

    def dequantize(self, indices: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, m, h, w) indices -> (B, d, h, w) latents."""
        if indices.dim() != 4 or indices.shape[1] != self.m:
            raise ValueError(f"expected indices of shape (B, {self.m}, h, w), got {tuple(indices.shape)}")
        idx = depth_to_space(indices) if self.extrapolate else indices
        b, _, hh, ww = idx.shape
        q = F.embedding(idx.permute(0, 2, 3, 1).reshape(-1), self.codes(codebook))
        return self._assemble(q, b, hh, ww)

    def forward(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: ``(z_q, codebook + commitment loss, indices)`` with straight-through gradients.
        ``codebook`` (``vqc train --joint``: a reduced book as a trainable leaf) replaces the
        trained one; its use is not counted towards the trained book's dead-code restarts."""
        zz = self._prep(z)
        b, _, hh, ww = zz.shape
        flat = self._split(zz)
        codes = self.codes(codebook)
        with torch.no_grad():
            idx = nearest_euclidean(flat, codes.detach())
        q = F.embedding(idx, codes)
        q_st, loss = straight_through(flat, q, self.beta)
        if self.training and codebook is None:
            record_usage(self, idx, flat, per=self.m)
        return self._assemble(q_st, b, hh, ww), loss, self._planes(idx, b, hh, ww)

    @torch.no_grad()
    def restart_dead_codes(self, threshold: float = 1e-3) -> int:
        """Re-seed codes whose usage EMA fell below ``threshold`` with recent sub-vectors."""
        return reseed_dead_codes(self.embedding.weight, self.usage, getattr(self, "_last_latents", None), threshold)

    # -- variable rate: what K-means reduction works on (vqcodec.train.codebooks.build_books)
    def parts(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The vectors the book quantizes, from latents (B, d, h, w): one part, all sub-vectors."""
        return [self._split(self._prep(z))]

    def base_books(self) -> list[torch.Tensor]:
        return [self.embedding.weight.detach().clone()]

    def nearest(self, vectors: torch.Tensor, book: torch.Tensor, part: int = 0) -> torch.Tensor:
        return nearest_euclidean(vectors, book)

    def join_books(self, books: list[torch.Tensor]) -> torch.Tensor:
        return books[0]

    def init_books(self, books: list[torch.Tensor]) -> None:
        """Seed the book with (K, d/groups) vectors, e.g. K-means centres of ``parts``."""
        self.embedding.weight.data.copy_(books[0].to(self.embedding.weight))
