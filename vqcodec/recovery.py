"""Prediction of index-map positions lost with their packets.

Methods (``--recover``):
- ``none``: fill every hole with the most frequent index of the K-book (a fixed fill).
- ``neighbour``: the code nearest to the mean of the known 8-neighbours' code vectors, filled
  from the best-surrounded holes outwards, so that every hole gets one even at heavy loss. With
  interleaved packets a lost packet leaves isolated holes whose neighbours are mostly known.

- ``ar``: the paper's autoregressive transformer (``vqc train-recovery --causal``): each hole is
  predicted from the indices before it in raster order, earlier holes marked lost, as trained with
  the paper's masking. It cannot see what was received after a hole. Decoded from the expected
  code vector like ``masked`` (below); its index map holds the nearest code.
- ``masked``: the bundle's bidirectional index-map transformer, which sees the received indices
  on every side and fills the holes in a few confident-first rounds: the recovery-only ``fill``
  model when the bundle ships one (``vqc train-recovery --task fill``), else the shared ``masked``
  one (``vqc train-recovery``), run on half-overlapping 16x16 tiles so that a hole on a tile's
  edge still sees across it. (Multiplying in ``ar``'s prediction helped the models of 2026-11-29 and
  no longer helps the annealed ``fill``: docs/history.md.) The decoder is given each
  hole's probability-weighted mean code vector, not a code of the book and not rescaled to unit
  length: a short blend where the model hesitates costs less than a confident wrong texture.
  Available when the bundle ships a masked model; then it is the default (cosine books, m = 1;
  otherwise it behaves as ``masked-index``).
- ``masked-index``: the same transformer, but each hole gets the code nearest that mean vector, so
  the recovered map is an ordinary index map (what ``masked`` reports as indices, and what a
  re-encode of the recovered file would carry). Measured against ``masked`` in docs/history.md.

Index maps with m > 1 planes (LooC, dual codebook): ``none`` and ``neighbour`` work plane by plane,
each plane with its own book (``codes`` is then a list of m books). The transformers were trained
on m = 1 maps of a plain-VQ bundle, so ``ar``, ``masked`` and ``masked-index`` fall back to
``neighbour`` for m > 1 (``codec`` says so in the loss report).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec.errors import VqcUsageError

METHODS = ("none", "neighbour", "ar", "masked", "masked-index")
TRANSFORMER = {"ar": "ar", "masked": "masked", "masked-index": "masked"}
"""The bundle transformer each transformer method needs."""
DEFAULT = "auto"  # masked when the bundle ships it, else ar, else neighbour (codec._recovery_choice)
BLEND_TEMPERATURE = 1.5
"""``masked``: the temperature of the distribution whose mean code vector the decoder gets at a hole
(the recovered index map does not depend on it). The fill model is overconfident where it is wrong:
a softer blend renders a quieter patch. Chosen on held-out training photos (K=64, 30 % loss, LPIPS-VGG
rise, benchmarks/recovery_holdout.py; docs/history.md, "The blend temperature")."""

FILL_STEPS = 2
"""``masked``: the confident-first rounds of the filling (each a pass of the transformer over the
map). 6 until 0.2.0; on held-out training photos (K=64, 16 packets, 30 % and 50 % loss, LPIPS-VGG
rise, benchmarks/recovery_holdout.py) 6, 4, 3 and 2 rounds fill equally well, so 0.3.0 runs 2:
a third of the time (docs/history.md, "Recovery on the int8 kernels")."""


def available(bundle) -> list[str]:
    """The methods a bundle can run: the baselines plus each whose transformer it ships."""
    return [m for m in METHODS if m not in TRANSFORMER or bundle.has_transformer(TRANSFORMER[m])]


def recover(indices: np.ndarray, missing: np.ndarray, codes: torch.Tensor | list[torch.Tensor], counts: np.ndarray,
            method: str = "neighbour", cosine: bool = True, transformer=None, k: int = 0) -> np.ndarray:  # fmt: skip
    """Fill ``indices`` (m, h, w) where ``missing`` (h, w) is True; returns a new array.

    Args:
        codes: (K, d) code vectors of the K-book (as used for decoding), shared by every plane, or
            a list of m books, one per index plane (the quantizer's ``plane_codes``).
        counts: (K,) index frequencies (the bundle's static table) for the fixed fill.
        transformer: the network the method needs (``TRANSFORMER``), else None.
    """
    return recover_soft(indices, missing, codes, counts, method, cosine, transformer, k)[0]


def recover_soft(indices: np.ndarray, missing: np.ndarray, codes: torch.Tensor | list[torch.Tensor], counts: np.ndarray,
                 method: str = "neighbour", cosine: bool = True, transformer=None,
                 k: int = 0) -> tuple[np.ndarray, torch.Tensor | None]:  # fmt: skip
    """``recover``, plus the (h, w, d) latent vectors the decoder should use at the holes instead
    of the recovered codes (``masked`` with a cosine book and m = 1), else None."""
    if method == "auto":
        method = "masked" if transformer is not None else "neighbour"
    if method not in METHODS:
        raise VqcUsageError(f"unknown recovery method {method!r}; choose one of auto, {', '.join(METHODS)}")
    if not missing.any():  # nothing lost: nothing to predict, whatever the method
        return indices.copy(), None
    if indices.shape[0] > 1 and method in TRANSFORMER:
        method = "neighbour"  # the transformers model m = 1 maps only
    if method in TRANSFORMER and transformer is None:
        hint = "vqc train-recovery --causal" if method == "ar" else "vqc train-recovery"
        raise VqcUsageError(f"this model bundle has no {TRANSFORMER[method]} recovery transformer (train one: {hint})")
    out = indices.copy()
    fill = int(np.argmax(counts))
    books = list(codes) if isinstance(codes, (list, tuple)) else [codes] * out.shape[0]
    if len(books) != out.shape[0]:
        raise ValueError(f"{len(books)} books for {out.shape[0]} index planes")
    codes = books[0]
    if method.startswith("masked") and not missing.all():
        miss = torch.from_numpy(missing)
        book = F.normalize(codes.float(), dim=1) if cosine else None  # Euclidean books: likeliest index
        if method == "masked" and book is not None and out.shape[0] == 1:
            filled, soft = transformer.fill_soft(torch.from_numpy(out[0]), miss, k, book, steps=FILL_STEPS,
                                                 temperature=BLEND_TEMPERATURE)  # fmt: skip
            out[0] = filled.numpy()
            return out, soft
        for j in range(out.shape[0]):
            out[j] = transformer.fill(torch.from_numpy(out[j]), miss, k, steps=FILL_STEPS, codes=book).numpy()
        return out, None
    if method == "ar":
        miss = torch.from_numpy(missing)
        book = F.normalize(codes.float(), dim=1) if cosine else None
        if book is not None and out.shape[0] == 1:
            filled, soft = transformer.predict_raster_soft(torch.from_numpy(out[0]), miss, k, book)
            out[0] = filled.numpy()
            return out, soft
        for j in range(out.shape[0]):
            out[j] = transformer.predict_raster(torch.from_numpy(out[j]), miss, k).numpy()
        return out, None
    if method == "none" or missing.all():
        out[:, missing] = fill
        return out, None
    return _neighbour(out, missing.copy(), books, fill, cosine), None


def _neighbour(idx: np.ndarray, missing: np.ndarray, books: list[torch.Tensor], fill: int, cosine: bool) -> np.ndarray:
    m, h, w = idx.shape
    books = [F.normalize(c, dim=1) if cosine else c for c in books]
    kernel = torch.ones(1, 1, 3, 3)
    kernel[0, 0, 1, 1] = 0
    for _ in range(h * w):
        if not missing.any():
            break
        known = torch.from_numpy(~missing).float()[None, None]
        n_known = F.conv2d(known, kernel, padding=1)[0, 0]
        if n_known[torch.from_numpy(missing)].max() == 0:
            idx[:, missing] = fill
            break
        # fill the holes that have the most known neighbours in this round
        best = n_known.masked_fill(~torch.from_numpy(missing), -1)
        target = (best == best.max()).numpy() & missing
        for j in range(m):
            c = books[j]
            vec = c[torch.from_numpy(idx[j])].permute(2, 0, 1) * known[0]  # (d, h, w), holes zeroed
            summed = F.conv2d(vec[:, None], kernel, padding=1)[:, 0]  # (d, h, w)
            mean = (summed / n_known.clamp_min(1)).permute(1, 2, 0)[torch.from_numpy(target)]
            if cosine:
                pick = (F.normalize(mean, dim=1) @ c.t()).argmax(1)
            else:
                pick = torch.cdist(mean, c).argmin(1)
            idx[j][target] = pick.numpy()
        missing &= ~target
    return idx
