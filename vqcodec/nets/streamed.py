"""The taef2-backbone autoencoder over images of any size, in memory bounded by a tile.

Run whole, a 24 MP photo needs about 12 GB: TAEF2's full-resolution layers keep several
64-channel activations of the whole image alive (3 GB each in bf16). Cutting the image into
overlapping tiles and blending the seams would bound that, but it changes the picture: every
GroupNorm normalises with statistics of the *whole* image (TAEF2's 1/8-resolution "pool" blocks,
the coder's ResnetBlocks), so a tile of sky on its own is normalised differently from the same
sky inside the photo. Here nothing is approximated:

- the full-resolution layers (TAEF2's encoder down to 1/8, its decoder up from 1/8) are purely
  local: they run tile by tile with a halo wider than their receptive field, so every output
  pixel is computed from exactly the inputs it sees untiled; there is no seam to blend;
- the 1/8- and 1/16-resolution parts (64 times fewer positions) run layer by layer over the
  whole map: each GroupNorm with statistics summed over all tiles first (in float64, as
  ``taef2.GroupNorm``), each convolution tile by tile with a halo of its own reach.

Peak memory is then a few maps at 1/8 resolution (128 channels: about 100 MB per 12 MP in bf16)
plus one tile's full-resolution activations, and the output equals the untiled network's up to
floating-point rounding (tests/test_streamed.py). Same precision as the untiled path: call inside
``model.autocast()``. The codec runs the full-resolution layers of each tile on OpenVINO
(``head`` / ``tail``, from ``openvino_engine.TILE_PARTS``) where it runs the whole networks there:
the same layers, so the result agrees with the whole network within the precision, as the whole
networks on the two engines do; with ``VQC_ENGINE=torch`` tiled and whole are the same file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.nets.taef2 import Block

Fn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int], None] | None

FULL_TILE = 768
"""Side, in pixels, of the core of a full-resolution tile: about 100 MB per 64-channel bf16
activation with its halo; larger tiles waste less time on halos but hold more memory."""
LOW_TILE = 256
"""Side, in map positions, of a tile of the 1/8- and 1/16-resolution layers."""


# ---------------------------------------------------------------- receptive fields
def reach(modules: list[nn.Module]) -> float:
    """How far (in input positions) an output of ``modules`` run in sequence can see: the halo a
    tile needs so that it computes its core exactly as the whole image would."""
    r, jump = 0.0, 1.0
    for m in _flatten(modules):
        if isinstance(m, nn.Conv2d):
            pad = m.padding[0] if isinstance(m.padding, tuple) else 0
            r += max(pad, m.kernel_size[0] - 1 - pad) * m.dilation[0] * jump
            jump *= m.stride[0]
        elif isinstance(m, nn.Upsample):
            r += jump  # nearest: an output may sit at the far side of its source position
            jump /= m.scale_factor
    return r


def _flatten(modules: list[nn.Module]) -> Iterator[nn.Module]:
    for m in modules:
        if isinstance(m, Block):
            if m.pool is not None:
                raise ValueError("a pool block normalises over the whole image: it is not local")
            yield from _flatten(list(m.conv))
        elif isinstance(m, nn.Sequential):
            yield from _flatten(list(m))
        else:
            if isinstance(m, nn.GroupNorm):
                raise ValueError("GroupNorm normalises over the whole image: it is not local")
            yield m


def _scale(modules: list[nn.Module]) -> Fraction:
    s = Fraction(1)
    for m in _flatten(modules):
        if isinstance(m, nn.Conv2d):
            s /= m.stride[0]
        elif isinstance(m, nn.Upsample):
            s *= int(m.scale_factor)
    return s


# ---------------------------------------------------------------- tiles
def tiled(fn: Fn, *xs: torch.Tensor, halo: float, scale: Fraction = Fraction(1), tile: int = LOW_TILE,
          align: int = 1, progress: Progress = None) -> torch.Tensor:  # fmt: skip
    """``fn(*xs)`` for a purely local ``fn`` (each output sees at most ``halo`` input positions
    away), computed on tiles of ``tile`` input positions with that halo around each.

    ``xs``: maps of one spatial size (``fn`` gets the same tile of each). ``scale``: output size /
    input size. ``align``: tile origins are multiples of it (the total stride of strided
    convolutions, so that every tile samples the same phase as the whole). Tiles at the map's edge
    are clipped there, where the network's own zero padding applies, as it does untiled.
    ``progress(n)`` is called with the number of input positions finished.
    """
    _, _, h, w = xs[0].shape
    pad = math.ceil(halo / align) * align
    tile = max(align, tile // align * align)
    out: torch.Tensor | None = None
    for y0 in range(0, h, tile):
        y1 = min(h, y0 + tile)
        for x0 in range(0, w, tile):
            x1 = min(w, x0 + tile)
            ry0, ry1, rx0, rx1 = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
            y = fn(*(_tile(x, ry0, ry1, rx0, rx1) for x in xs))
            if out is None:
                fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else None
                out = torch.empty((y.shape[0], y.shape[1], int(h * scale), int(w * scale)), dtype=y.dtype,
                                  memory_format=fmt or torch.contiguous_format)  # fmt: skip
            oy, ox = int((y0 - ry0) * scale), int((x0 - rx0) * scale)
            th, tw = int((y1 - y0) * scale), int((x1 - x0) * scale)
            sy, sx = int(y0 * scale), int(x0 * scale)
            out[:, :, sy : sy + th, sx : sx + tw] = y[:, :, oy : oy + th, ox : ox + tw]
            del y
            if progress is not None:
                progress((y1 - y0) * (x1 - x0))
    assert out is not None
    return out


def _tile(x: torch.Tensor, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    part = x[:, :, y0:y1, x0:x1]
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return part.contiguous(memory_format=torch.channels_last)
    return part.contiguous()


def local(modules: list[nn.Module], x: torch.Tensor, tile: int = LOW_TILE, pre: Fn | None = None,
          post: Fn | None = None, progress: Progress = None, run: Fn | None = None) -> torch.Tensor:  # fmt: skip
    """Run a purely local stack of layers (``pre`` and ``post`` elementwise) tile by tile; ``run``,
    when given, computes ``modules`` on a tile instead (another engine: the same layers)."""
    seq = run or nn.Sequential(*modules)
    scale = _scale(modules)

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = seq(pre(t) if pre is not None else t)
        return post(t) if post is not None else t

    align = int(1 / scale) if scale < 1 else 1
    return tiled(fn, x, halo=reach(modules), scale=scale, tile=tile, align=align, progress=progress)


# ---------------------------------------------------------------- GroupNorm over tiles
def _bands(x: torch.Tensor, rows: int = 64) -> Iterator[torch.Tensor]:
    for y in range(0, x.shape[2], rows):
        yield x[:, :, y : y + rows]


def group_stats(gn: nn.GroupNorm, source: Callable[[], Iterator[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (B, C, 1, 1) mean and 1/std of ``gn``'s groups over every band ``source()``
    yields (called twice: mean, then the variance around it), summed in float64 like
    ``taef2.GroupNorm`` so that the float32 statistics match the whole-image ones."""
    g = gn.num_groups
    total = count = None
    for band in source():
        b, c = band.shape[:2]
        s = band.float().reshape(b, c, -1).double().reshape(b, g, -1).sum(-1)  # type: ignore[union-attr]
        total = s if total is None else total + s
        n = band[0, : c // g].numel()
        count = n if count is None else count + n
    assert total is not None and count is not None
    mean = total / count
    sq = None
    for band in source():
        b, c = band.shape[:2]
        d = band.float().reshape(b, c, -1).double().reshape(b, g, c // g, -1) - mean[:, :, None, None]
        s = d.square().sum((-2, -1))
        sq = s if sq is None else sq + s
    assert sq is not None
    var = sq / count
    per = c // g
    m = mean.float().repeat_interleave(per, 1)[:, :, None, None]
    r = torch.rsqrt(var.float() + gn.eps).repeat_interleave(per, 1)[:, :, None, None]
    return m, r


def group_apply(gn: nn.GroupNorm, t: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``gn(t)`` with whole-map statistics, the same float32 ops as ``taef2.GroupNorm.forward``."""
    mean, rstd = stats
    y = (t.float() - mean) * rstd
    if gn.affine:
        y = y * gn.weight.float().view(1, -1, 1, 1) + gn.bias.float().view(1, -1, 1, 1)
    return y.to(t.dtype) if not torch.is_autocast_enabled("cpu") else y


# ---------------------------------------------------------------- blocks with global statistics
def norm_silu(gn: nn.GroupNorm, x: torch.Tensor, modules: list[nn.Module], tile: int = LOW_TILE) -> torch.Tensor:
    """``modules(silu(gn(x)))``: the GroupNorm with whole-map statistics, the local rest in tiles."""
    stats = group_stats(gn, partial(_bands, x))
    seq = nn.Sequential(*modules)
    return tiled(lambda t: seq(F.silu(group_apply(gn, t, stats))), x, halo=reach(modules), tile=tile)


def resnet_block(block: nn.Module, x: torch.Tensor, tile: int = LOW_TILE) -> torch.Tensor:
    """``ResnetBlock`` (norm-SiLU-conv twice plus a skip) layer by layer over the whole map."""
    h = norm_silu(block.norm1, x, [block.conv1], tile)
    s2 = group_stats(block.norm2, partial(_bands, h))
    skip = getattr(block, "nin_shortcut", None)

    def second(hh: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        out = block.conv2(F.silu(group_apply(block.norm2, hh, s2)))
        return (skip(xx) if skip is not None else xx) + out

    return tiled(second, h, x, halo=reach([block.conv2]), tile=tile)


def pool_block(block: Block, x: torch.Tensor, tile: int = LOW_TILE) -> torch.Tensor:
    """TAEF2's ``Block(pool=True)``: ``x + pool(x)`` (a GroupNorm over the whole map), then the
    local conv chain and its skip."""
    assert block.pool is not None
    expand, gn, _, squeeze = block.pool
    stats = group_stats(gn, lambda: (expand(band) for band in _bands(x)))
    x = tiled(lambda t: t + squeeze(F.relu(group_apply(gn, expand(t), stats))), x, halo=0, tile=tile)
    return tiled(lambda t: block.fuse(block.conv(t) + block.skip(t)), x, halo=reach(list(block.conv)), tile=tile)


def _run(modules: list[nn.Module], x: torch.Tensor, tile: int) -> torch.Tensor:
    """A sequence of low-resolution layers: pool blocks and ResnetBlocks whole-map, runs of local
    layers fused tile by tile."""
    from vqcodec.nets.autoencoder import ResnetBlock

    pending: list[nn.Module] = []

    def flush(x: torch.Tensor) -> torch.Tensor:
        if pending:
            x = local(list(pending), x, tile)
            pending.clear()
        return x

    for m in modules:
        if isinstance(m, Block) and m.pool is not None:
            x = pool_block(m, flush(x), tile)
        elif isinstance(m, ResnetBlock):
            x = resnet_block(m, flush(x), tile)
        elif isinstance(m, nn.Sequential):
            x = _run(list(m), flush(x), tile)
        else:
            pending.append(m)
    return flush(x)


# ---------------------------------------------------------------- the autoencoder
def head_modules(model: nn.Module) -> list[nn.Module]:
    """The encoder's full-resolution layers: TAEF2's encoder before its first pool block (local)."""
    taef2 = list(model.encoder.taef2)
    return taef2[: next(i for i, m in enumerate(taef2) if isinstance(m, Block) and m.pool is not None)]


def tail_modules(model: nn.Module) -> list[nn.Module]:
    """The decoder's full-resolution layers: TAEF2's decoder after its last pool block (local)."""
    taef2 = list(model.decoder.taef2)
    return taef2[max(i for i, m in enumerate(taef2) if isinstance(m, Block) and m.pool is not None) + 1 :]


def encode_latent(model: nn.Module, image: torch.Tensor, tile: int | None = None, low_tile: int | None = None,
                  progress: Progress = None, head: Fn | None = None) -> torch.Tensor:  # fmt: skip
    """(1, 3, H, W) uint8 image (H, W multiples of the stride) -> the pre-quantization latent,
    as ``model.encode_latent`` of the image in [-1, 1] gives it. ``tile``/``low_tile``: default
    ``FULL_TILE``/``LOW_TILE``. ``head``: runs ``head_modules`` on a tile in another engine."""
    tile, low_tile = tile or FULL_TILE, low_tile or LOW_TILE
    enc = model.encoder
    taef2 = list(enc.taef2)
    first = head_modules(model)

    def pixels(t: torch.Tensor) -> torch.Tensor:  # the untiled path's conversions, op for op
        x = t.float() / 127.5 - 1.0
        return (x * 0.5 + 0.5).contiguous(memory_format=torch.channels_last)

    f = local(first, image, tile, pre=pixels, progress=progress, run=head)
    lat = _run(taef2[len(first) :], f, low_tile)
    del f
    h = _run([enc.conv_in, enc.block0, enc.downsample, enc.block1], lat, low_tile)
    return norm_silu(enc.norm_out, h, [enc.conv_out, model.quant_conv], low_tile)


def decode_latent(model: nn.Module, z: torch.Tensor, tile: int | None = None, low_tile: int | None = None,
                  progress: Progress = None, tail: Fn | None = None) -> torch.Tensor:  # fmt: skip
    """Quantized latent (1, d, h, w) -> (1, 3, 16h, 16w) uint8 image, as ``model.decode_latent``
    followed by the codec's rounding gives it. ``tail``: runs ``tail_modules`` on a tile in
    another engine."""
    tile, low_tile = tile or FULL_TILE, low_tile or LOW_TILE
    dec = model.decoder
    h = _run([model.post_quant_conv, dec.conv_in, dec.block1], z, low_tile)
    h = local([nn.Upsample(scale_factor=2.0, mode="nearest"), dec.upsample], h, low_tile)
    h = _run([dec.block0], h, low_tile)
    lat = norm_silu(dec.norm_out, h, [dec.conv_out], low_tile)
    del h
    taef2 = list(dec.taef2)
    last = tail_modules(model)
    f = _run(taef2[: len(taef2) - len(last)], lat, low_tile)

    def pixels(t: torch.Tensor) -> torch.Tensor:  # render (x 2 - 1) and the codec's rounding, op for op
        x = (t * 2.0 - 1.0).float()
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    return local(last, f, max(1, int(tile / _scale(last))), post=pixels, progress=progress, run=tail)


__all__ = ["FULL_TILE", "LOW_TILE", "decode_latent", "encode_latent", "group_stats", "head_modules", "reach",
           "tail_modules", "tiled"]
