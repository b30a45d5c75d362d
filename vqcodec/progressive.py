"""Layered (progressive) files end to end: image -> nested index maps -> layered .vqc, and back to
the deepest complete layer. The maps and their coding are ``vqcodec.layers``'; the byte layout
is ``vqcodec.layerfile``'s; this module joins them to the bundle's networks and coders.

Layer 1 is coded exactly like a single-layer file of K_1 (its own context model or static
table), so the base layer costs what a K_1 file costs for its map; each refinement is coded with
the same coder for its own K, restricted to the children of the parent code below it.
"""

from __future__ import annotations

import numpy as np

from vqcodec import codec, layerfile, layers
from vqcodec.codec import Encoded, LossReport
from vqcodec.container import CodingMode, Header
from vqcodec.errors import VqcFormatError, VqcModelError, VqcUsageError
from vqcodec.fileinfo import _latent_hw
from vqcodec.zoo import Bundle


def check(bundle: Bundle, sizes: tuple[int, ...], mode: CodingMode | None) -> tuple[layers.LayerSet, CodingMode]:
    """The bundle's nested books for ``sizes`` and the coding mode of every layer (``mode`` None:
    int8 where shipped for every K, else the int16 exact model, else static), or a usage error."""
    if bundle.m != 1:
        raise VqcUsageError(f"layered files need single-plane index maps; model {bundle.name!r} has m = {bundle.m}")
    for k in sizes:
        bundle.codebook(k)
    ls = bundle.layer_set(sizes)
    if mode is None:
        modes = {codec.best_mode(bundle, k) for k in sizes}
        mode = modes.pop() if len(modes) == 1 else CodingMode.STATIC
    if mode not in layerfile.LAYER_MODES:
        raise VqcUsageError(f"layered files are coded with int8, exact or static, not {mode.name.lower()}")
    for k in sizes:
        _coder(bundle, k, mode)  # a model without that coder for some K: the usage error now
    return ls, mode


def _coder(bundle: Bundle, k: int, mode: CodingMode):
    """(integer context model, None) for the context modes, (None, static counts) for static."""
    if mode == CodingMode.INT8:
        return codec._int8_net(bundle, k), None
    if mode == CodingMode.EXACT:
        return codec._context_net(bundle, k, exact=True), None
    return None, bundle.table(k).counts


def maps_for(latent: codec.Latent, bundle: Bundle, ls: layers.LayerSet, n: int) -> list[Encoded]:
    """The first ``n`` nested maps of ``ls`` for a latent, each an ``Encoded`` with its layer's book."""
    maps = layers.select(latent.z, bundle.model.quantize, ls)[:n]
    return [Encoded(m[None].astype(np.int64), latent.image_size, latent.padded_size, k, bundle.model_id, book=b)
            for m, k, b in zip(maps, ls.sizes, ls.books, strict=False)]  # fmt: skip


def pack(encs: list[Encoded], bundle: Bundle, ls: layers.LayerSet, sizes: tuple[int, ...], mode: CodingMode) -> bytes:
    """Nested maps (one per layer of ``sizes``) -> the layered file with every layer."""
    payloads = [codec._code(encs[0].indices, bundle, sizes[0], mode)]
    for i in range(1, len(sizes)):
        net, counts = _coder(bundle, sizes[i], mode)
        payloads.append(layers.encode_refinement(encs[i].indices[0], encs[i - 1].indices[0], ls, i - 1, net, counts,
                                                 bundle.context_levels))  # fmt: skip
    w, h = encs[0].image_size
    header = Header(bundle.model_id, sizes[-1], 1, w, h, mode)
    return layerfile.pack_layers(header, sizes, ls.tag, payloads)


def compress(pixels: np.ndarray, bundle: Bundle, sizes: tuple[int, ...], mode: CodingMode | None = None,
             max_bytes: int | None = None) -> tuple[bytes, list[Encoded]]:  # fmt: skip
    """(H, W, 3) uint8 -> (layered file, the nested maps written). With ``max_bytes`` the file
    stops after the last layer that fits (byte for byte the prefix ``vqc trim`` would cut);
    ``VqcBudgetError`` when even the base layer does not."""
    ls, mode = check(bundle, sizes, mode)
    encs = maps_for(codec.encode_latent(pixels, bundle), bundle, ls, len(sizes))
    data = pack(encs, bundle, ls, sizes, mode)
    if max_bytes is not None:
        data = layerfile.trim(data, codec.check_budget(max_bytes))
    return data, encs[: layerfile.scan_layers(data).complete]


def unpack(data: bytes, model: Bundle | str | None, max_pixels: int) -> tuple[Encoded, Bundle, LossReport]:
    """A layered file -> (the deepest complete layer's map, bundle, report naming the layer)."""
    scan = layerfile.scan_layers(data)
    header = scan.header
    if header.width * header.height > max_pixels:
        raise VqcFormatError(f"file declares {header.width}x{header.height} pixels, above the limit of {max_pixels}")
    bundle = codec._bundle_for(header, model)
    if header.m != 1 or bundle.m != 1:
        raise VqcFormatError(f"layered file with m={header.m}; model {bundle.name!r} has m = {bundle.m}")
    try:
        ls = bundle.layer_set(scan.sizes)
    except VqcUsageError as e:
        raise VqcModelError(f"layered file: {e}") from None
    if ls.tag != scan.tag:
        raise VqcModelError(f"file was layered with other nested books (tag {scan.tag:04x}, model {bundle.name!r} "
                            f"has {ls.tag:04x})")  # fmt: skip
    hh, ww = _latent_hw(header.width, header.height, bundle.stride)
    sizes = scan.sizes
    try:
        maps = [codec._uncode(scan.payloads[0], bundle, sizes[0], header.mode, hh * ww, (1, hh, ww)).reshape(hh, ww)]
        for i in range(1, scan.complete):
            net, counts = _coder(bundle, sizes[i], header.mode)
            maps.append(layers.decode_refinement(scan.payloads[i], maps[-1], ls, i - 1, net, counts,
                                                 bundle.context_levels))  # fmt: skip
    except VqcUsageError as e:
        raise VqcFormatError(f"layered file: {e}") from None
    n = len(maps)
    padded = (ww * bundle.stride, hh * bundle.stride)
    enc = Encoded(maps[-1][None], (header.width, header.height), padded, sizes[n - 1], header.model_id,
                  book=ls.books[n - 1])  # fmt: skip
    return enc, bundle, LossReport(layers=sizes, layers_decoded=n, layer_problem=scan.problem)
