"""Vector quantizers behind one interface: ``quantize(z) -> indices (B, m, h, w)``, ``dequantize``.

The container and the entropy coder only ever see ``(K, m, h, w)`` integers, so every quantizer
here exposes ``codebook_size`` and ``m`` (indices per latent position). Plain VQ has ``m == 1``.

The plain VQ uses a *cosine* codebook (both the latent and the codes are l2-normalised before the
nearest-neighbour search, as in ViT-VQGAN): it keeps the codes on one scale with the encoder output,
which is what keeps a 1024-code book alive when it is trained from scratch on little compute.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


def l2norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Unit-length along ``dim`` (the cosine transform applied to latents and codes)."""
    return F.normalize(x, dim=dim, eps=1e-6)


@torch.no_grad()
def reseed_dead_codes(weight: torch.Tensor, usage: torch.Tensor, latents: torch.Tensor | None, threshold: float) -> int:
    """Replace the rows of ``weight`` whose ``usage`` EMA is below ``threshold`` by random rows of
    ``latents`` plus a little noise, and give them the mean usage; returns how many."""
    if latents is None:
        return 0
    dead = (usage < threshold).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    pick = latents[torch.randint(0, latents.shape[0], (dead.numel(),), device=latents.device)]
    noise = 0.01 * torch.randn_like(pick)
    weight.data[dead] = (pick + noise).to(weight.dtype)
    usage[dead] = usage.mean()
    return int(dead.numel())


def straight_through(flat: torch.Tensor, q: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """VQ-VAE's codebook + ``beta`` x commitment loss, and ``q`` with the straight-through gradient."""
    loss = F.mse_loss(q, flat.detach()) + beta * F.mse_loss(flat, q.detach())
    return flat + (q - flat).detach(), loss


@torch.no_grad()
def record_usage(module: nn.Module, idx: torch.Tensor, flat: torch.Tensor, per: int = 1) -> None:
    """Training statistics for dead-code restarts: the usage EMA of each code (``per`` indices per
    latent counted as one) and a sample of recent vectors (``module._last_latents``)."""
    counts = torch.bincount(idx, minlength=module.codebook_size).float()
    module.usage.mul_(0.99).add_(counts / per, alpha=0.01)
    module._last_latents = flat[torch.randperm(flat.shape[0], device=flat.device)[:4096]].detach()


class Quantizer(Protocol):
    """What the codec, the trainer and the K-means reduction need from a quantizer.

    Implemented by ``CosineVQ`` (here), ``LoocVQ`` (``looc.py``) and ``DualCodebookVQ``
    (``dual.py``). A *codebook* argument is a reduced book in the quantizer's own layout (what a
    bundle stores per K); None means the trained one.
    """

    codebook_size: int  # K of the trained book (each book of a dual quantizer)
    m: int  # index planes per latent position
    plane_cosine: bool  # whether recovery compares the codes of a plane by angle (else distance)
    part_cosine: bool  # whether K-means reduction works on unit vectors

    def quantize(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d, h, w) -> (B, m, h, w) int64 indices."""

    def dequantize(self, indices: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, m, h, w) -> (B, d, h, w) code vectors."""

    def plane_codes(self, codebook: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The (K, d_j) code vectors each index plane points into (recovery averages them)."""

    def parts(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The (N_j, d_j) vectors each book quantizes, from latents (B, d, h, w)."""

    def base_books(self) -> list[torch.Tensor]:
        """The trained books, one per part (K-means reduces each)."""

    def nearest(self, vectors: torch.Tensor, book: torch.Tensor, part: int = 0) -> torch.Tensor:
        """(N, d_j) -> (N,) nearest code of ``book`` (a book of part ``part``)."""

    def join_books(self, books: list[torch.Tensor]) -> torch.Tensor:
        """One reduced book per part -> the codebook argument of quantize/dequantize."""

    def init_books(self, books: list[torch.Tensor]) -> None:
        """Seed the trained books, one per part (e.g. K-means of encoder outputs)."""

    def restart_dead_codes(self, threshold: float = 1e-3) -> int: ...


class CosineVQ(nn.Module):
    """Plain VQ with an l2-normalised codebook, commitment loss and dead-code restarts.

    Args:
        codebook_size: number of codes (the base K, e.g. 1024).
        dim: code dimension (the latent channels after ``quant_conv``).
        beta: commitment weight (taming-transformers uses 0.25).
        cosine: l2-normalise latents and codes (True); False is taming's Euclidean lookup, kept
            so that a taming checkpoint behaves as trained.

    ``forward(z)`` with ``z`` of shape (B, dim, h, w) returns ``(z_q, loss, indices)`` with the
    straight-through estimator; ``quantize``/``dequantize`` are the inference pair. A reduced
    codebook (K-means, see ``vqcodec.train.codebooks``) is swapped in with ``set_codebook``.
    """

    def __init__(self, codebook_size: int = 1024, dim: int = 16, beta: float = 0.25, cosine: bool = True) -> None:
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError("codebook_size must be >= 2 and dim >= 1")
        self.codebook_size = codebook_size
        self.dim = dim
        self.m = 1
        self.beta = beta
        self.cosine = cosine
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.normal_(self.embedding.weight)
        # usage statistics kept in buffers so that they travel with the checkpoint
        self.register_buffer("usage", torch.zeros(codebook_size))

    def codes(self, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """The codebook (K, dim) actually used for lookup and reconstruction.

        ``codebook`` replaces the trained one (a K-means-reduced book of the same dimension).
        """
        w = self.embedding.weight if codebook is None else codebook
        return l2norm(w) if self.cosine else w

    @property
    def plane_cosine(self) -> bool:
        return self.cosine

    @property
    def part_cosine(self) -> bool:
        return self.cosine

    def plane_codes(self, codebook: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [self.codes(codebook)]

    def parts(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])]

    def base_books(self) -> list[torch.Tensor]:
        return [self.embedding.weight.detach().clone()]

    def nearest(self, vectors: torch.Tensor, book: torch.Tensor, part: int = 0) -> torch.Tensor:
        return self._nearest(vectors, book)

    def join_books(self, books: list[torch.Tensor]) -> torch.Tensor:
        return books[0]

    def init_books(self, books: list[torch.Tensor]) -> None:
        self.embedding.weight.data.copy_(books[0].to(self.embedding.weight))

    def _prep(self, flat: torch.Tensor) -> torch.Tensor:
        return l2norm(flat) if self.cosine else flat

    def set_codebook(self, weight: torch.Tensor) -> None:
        """Replace the codebook by ``weight`` (K', dim), e.g. a K-means-reduced one."""
        weight = weight.detach().to(self.embedding.weight)
        self.embedding = nn.Embedding(weight.shape[0], weight.shape[1])
        self.embedding.weight.data.copy_(weight)
        self.codebook_size = weight.shape[0]
        self.usage = torch.zeros(weight.shape[0], device=weight.device)

    def _nearest(self, z_flat: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """Index of the nearest code; argmin/argmax return the first optimum (deterministic)."""
        codes = self.codes(codebook)
        if self.cosine:
            return (l2norm(z_flat) @ codes.t()).argmax(dim=1)
        dist = (z_flat**2).sum(1, keepdim=True) - 2 * z_flat @ codes.t() + (codes**2).sum(1)[None]
        return dist.argmin(dim=1)

    def quantize(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, dim, h, w) latents -> (B, 1, h, w) int64 indices (into ``codebook`` if given)."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        return self._nearest(flat, codebook).view(b, 1, h, w)

    def dequantize(self, indices: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, h, w) indices -> (B, dim, h, w) code vectors."""
        if indices.dim() != 4 or indices.shape[1] != 1:
            raise ValueError(f"expected indices of shape (B, 1, h, w), got {tuple(indices.shape)}")
        q = F.embedding(indices[:, 0], self.codes(codebook))
        return q.permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass; ``codebook`` (a reduced book as a trainable leaf) replaces the trained one
        and is not counted towards its dead-code restarts."""
        b, c, h, w = z.shape
        flat = self._prep(z.permute(0, 2, 3, 1).reshape(-1, c))
        with torch.no_grad():
            idx = self._nearest(flat, None if codebook is None else codebook.detach())
        q = F.embedding(idx, self.codes(codebook))
        q_st, loss = straight_through(flat, q, self.beta)
        if self.training and codebook is None:
            record_usage(self, idx, flat)
        z_q = q_st.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return z_q, loss, idx.view(b, 1, h, w)

    @torch.no_grad()
    def restart_dead_codes(self, threshold: float = 1e-3) -> int:
        """Re-seed codes whose usage EMA fell below ``threshold`` with recent encoder outputs.

        Returns how many codes were restarted. Called every few hundred steps by the trainer.
        """
        return reseed_dead_codes(self.embedding.weight, self.usage, getattr(self, "_last_latents", None), threshold)
