"""Dual codebook VQ: half of each latent from a transformer-updated global book, half from a local one.

Paper: "Dual Codebook VQ: Enhanced Image Reconstruction with Reduced Codebook Size"
(``../shared/papers/dual-codebook-vq.txt``). The latent (d channels) is split in two halves. The
first is quantized by the *global* codebook, whose code vectors are all updated together by a
small transformer that reads the whole book as one sequence (``global_codes``); the second by a
plain *local* codebook (deterministic nearest-neighbour selection). The two quantized halves are
concatenated for the decoder. Each position carries two indices: ``m == 2``.

The transformed global book depends only on the weights, so in eval mode it is computed once and
cached (``global_codes``); ``train()`` and loading weights drop the cache. Bundles store the
transformed (and K-means-reduced) books themselves, so decoding never runs the transformer.

Data flow::

    z (B,d,h,w) -> l2-normalise over d (``normalize``) -> [z_g | z_l]
      z_g -> nearest of T(G) (transformer over the global book) -> index plane 0
      z_l -> nearest of L                                       -> index plane 1
    indices -> [T(G)[i0] | L[i1]] -> z_q (B,d,h,w)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.nets.looc import nearest_euclidean
from vqcodec.nets.quantizers import l2norm, reseed_dead_codes, straight_through


class DualCodebookVQ(nn.Module):
    """Global (transformer-updated) + local codebooks, one per half of the latent.

    Args:
        codebook_size: K, codes in each of the two books.
        dim: latent channels d (even); each book has d/2-dimensional codes.
        width, heads, layers: the global book's transformer (a pre-norm encoder over the K codes).
        beta: commitment weight.
        normalize: l2-normalise each whole latent before splitting (see ``LoocVQ``).

    A codebook passed to ``quantize``/``dequantize`` is a (2, K, d/2) tensor: the transformed
    global book, then the local one.
    """

    plane_cosine = False
    part_cosine = False

    def __init__(self, codebook_size: int = 256, dim: int = 16, width: int = 64, heads: int = 4, layers: int = 1,
                 beta: float = 0.25, normalize: bool = True) -> None:  # fmt: skip
        super().__init__()
        if codebook_size < 2 or dim < 2 or dim % 2 or width % heads:
            raise ValueError(f"dual codebook needs codebook_size >= 2, an even dim ({dim}), width % heads == 0")
        self.codebook_size = codebook_size
        self.dim = dim
        self.half = dim // 2
        self.m = 2
        self.beta = beta
        self.normalize = normalize
        self.cosine = False
        self.global_embedding = nn.Embedding(codebook_size, self.half)
        self.local_embedding = nn.Embedding(codebook_size, self.half)
        for e in (self.global_embedding, self.local_embedding):
            nn.init.normal_(e.weight, std=dim**-0.5)
        self.global_in = nn.Linear(self.half, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.global_transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.global_out = nn.Linear(width, self.half)
        nn.init.zeros_(self.global_out.weight)  # starts as the identity: T(G) = G
        nn.init.zeros_(self.global_out.bias)
        self.register_buffer("usage", torch.zeros(2, codebook_size))
        self._cache: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module._drop_cache())

    def _drop_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        self._drop_cache()
        return super().train(mode)

    def global_codes(self) -> torch.Tensor:
        """T(G): the global book after the transformer, (K, d/2); cached in eval mode."""
        if not self.training and self._cache is not None:
            return self._cache
        g = self.global_embedding.weight
        t = g + self.global_out(self.global_transformer(self.global_in(g)[None]))[0]
        if not self.training:
            self._cache = t.detach()
        return t

    def books(self, codebook: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if codebook is None:
            return self.global_codes(), self.local_embedding.weight
        if codebook.dim() != 3 or codebook.shape[0] != 2:
            raise ValueError(f"a dual codebook is (2, K, d/2), got {tuple(codebook.shape)}")
        return codebook[0], codebook[1]

    def plane_codes(self, codebook: torch.Tensor | None = None) -> list[torch.Tensor]:
        return list(self.books(codebook))

    def _halves(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize:
            z = l2norm(z, dim=1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        return flat[:, : self.half], flat[:, self.half :]

    def quantize(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d, h, w) latents -> (B, 2, h, w) int64 indices (global, local)."""
        b, _, h, w = z.shape
        g, loc = self.books(codebook)
        zg, zl = self._halves(z)
        idx = torch.stack([nearest_euclidean(zg, g), nearest_euclidean(zl, loc)], dim=1)
        return idx.view(b, h, w, 2).permute(0, 3, 1, 2).contiguous()

    def dequantize(self, indices: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2, h, w) indices -> (B, d, h, w) latents."""
        if indices.dim() != 4 or indices.shape[1] != 2:
            raise ValueError(f"expected indices of shape (B, 2, h, w), got {tuple(indices.shape)}")
        g, loc = self.books(codebook)
        q = torch.cat([F.embedding(indices[:, 0], g), F.embedding(indices[:, 1], loc)], dim=-1)
        return q.permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass, as ``LoocVQ.forward``; ``codebook`` a (2, K, d/2) reduced book (``--joint``)."""
        b, _, h, w = z.shape
        g, loc = self.books(codebook)
        zg, zl = self._halves(z)
        flat = torch.cat([zg, zl], dim=1)
        with torch.no_grad():
            ig, il = nearest_euclidean(zg, g.detach()), nearest_euclidean(zl, loc.detach())
        q = torch.cat([F.embedding(ig, g), F.embedding(il, loc)], dim=1)
        q_st, loss = straight_through(flat, q, self.beta)
        if self.training and codebook is None:
            with torch.no_grad():
                for j, i in enumerate((ig, il)):
                    self.usage[j].mul_(0.99).add_(torch.bincount(i, minlength=self.codebook_size).float(), alpha=0.01)
                self._last_latents = flat[torch.randperm(flat.shape[0], device=flat.device)[:4096]].detach()
        idx = torch.stack([ig, il], dim=1).view(b, h, w, 2).permute(0, 3, 1, 2)
        return q_st.view(b, h, w, self.dim).permute(0, 3, 1, 2).contiguous(), loss, idx

    @torch.no_grad()
    def restart_dead_codes(self, threshold: float = 1e-3) -> int:
        """Re-seed dead codes of either book with recent latent halves (global: its input codes)."""
        latents = getattr(self, "_last_latents", None)
        n = 0
        for j, emb in enumerate((self.global_embedding, self.local_embedding)):
            part = None if latents is None else latents[:, j * self.half : (j + 1) * self.half]
            n += reseed_dead_codes(emb.weight, self.usage[j], part, threshold)
        self._drop_cache()
        return n

    # -- variable rate (vqcodec.train.codebooks.build_books): each book is reduced on its own half
    def parts(self, z: torch.Tensor) -> list[torch.Tensor]:
        return list(self._halves(z))

    def base_books(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [self.global_codes().detach().clone(), self.local_embedding.weight.detach().clone()]

    def nearest(self, vectors: torch.Tensor, book: torch.Tensor, part: int = 0) -> torch.Tensor:
        return nearest_euclidean(vectors, book)

    def join_books(self, books: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(books)

    def init_books(self, books: list[torch.Tensor]) -> None:
        """Seed the global book's input codes and the local book (each (K, d/2), e.g. K-means
        centres of ``parts``); the transformer starts as the identity, so T(G) = G then."""
        self.global_embedding.weight.data.copy_(books[0].to(self.global_embedding.weight))
        self.local_embedding.weight.data.copy_(books[1].to(self.local_embedding.weight))
        self._drop_cache()
