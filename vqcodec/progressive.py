"""Layered (progressive) files end to end: image -> nested index maps -> layered .vqc, and back to
the deepest complete layer. The maps and their coding are ``vqcodec.layers``'; the byte layout
is ``vqcodec.layerfile``'s; this module joins them to the bundle's networks and coders.

Layer 1 is coded exactly like a single-layer file of K_1 (its own context model or static
table), so the base layer costs what a K_1 file costs for its map; each refinement is coded with
the same coder for its own K, restricted to the children of the parent code below it.
"""

from __future__ import annotations

import numpy as np
import torch

from vqcodec import codec, interleave, layerfile, layerpackets, layers, recovery
from vqcodec.codec import Encoded, LossReport
from vqcodec.container import INT8_MODES, MAX_PACKETS, CodingMode, Header
from vqcodec.errors import VqcBudgetError, VqcFormatError, VqcModelError, VqcUsageError
from vqcodec.fileinfo import _latent_hw
from vqcodec.zoo import Bundle


def check(bundle: Bundle, sizes: tuple[int, ...], mode: CodingMode | None) -> tuple[layers.LayerSet, CodingMode]:
    """The bundle's nested books for ``sizes`` and the coding mode of every layer (``mode`` None:
    int8-paired where the int8 model is shipped for every K, else the int16 exact model, else static), or a usage error."""
    if bundle.m != 1:
        raise VqcUsageError(f"layered files need single-plane index maps; model {bundle.name!r} has m = {bundle.m}")
    for k in sizes:
        bundle.codebook(k)
    ls = bundle.layer_set(sizes)
    if mode is None:
        modes = {codec.best_mode(bundle, k) for k in sizes}
        mode = modes.pop() if len(modes) == 1 else CodingMode.STATIC
    if mode not in layerfile.LAYER_MODES:
        raise VqcUsageError(f"layered files are coded with int8-paired, int8, exact or static, not {mode.name.lower()}")
    for k in sizes:
        _coder(bundle, k, mode)  # a model without that coder for some K: the usage error now
    return ls, mode


def _coder(bundle: Bundle, k: int, mode: CodingMode):
    """(integer context model, None) for the context modes, (None, static counts) for static."""
    if mode in INT8_MODES:
        return codec._int8_net(bundle, k), None
    if mode == CodingMode.EXACT:
        return codec._context_net(bundle, k, exact=True), None
    return None, bundle.table(k).counts


def maps_for(latent: codec.Latent, bundle: Bundle, ls: layers.LayerSet, n: int) -> list[Encoded]:
    """The first ``n`` nested maps of ``ls`` for a latent, each an ``Encoded`` with its layer's book."""
    maps = layers.select(latent.z, bundle.model.quantize, ls)[:n]
    return [Encoded(m[None].astype(np.int64), latent.image_size, latent.padded_size, k, bundle.model_id, book=b)
            for m, k, b in zip(maps, ls.sizes, ls.draw_books, strict=False)]  # fmt: skip


def pack(encs: list[Encoded], bundle: Bundle, ls: layers.LayerSet, sizes: tuple[int, ...], mode: CodingMode) -> bytes:
    """Nested maps (one per layer of ``sizes``) -> the layered file with every layer."""
    payloads = [codec._code(encs[0].indices, bundle, sizes[0], mode)]
    for i in range(1, len(sizes)):
        net, counts = _coder(bundle, sizes[i], mode)
        payloads.append(layers.encode_refinement(encs[i].indices[0], encs[i - 1].indices[0], ls, i - 1, net, counts,
                                                 bundle.context_levels, paired=mode == CodingMode.INT8_PAIRED))  # fmt: skip
    w, h = encs[0].image_size
    header = Header(bundle.model_id, sizes[-1], 1, w, h, mode)
    return layerfile.pack_layers(header, sizes, ls.tag, payloads)


def pack_packets(encs: list[Encoded], bundle: Bundle, ls: layers.LayerSet, sizes: tuple[int, ...], packets: int,
                 parity: tuple[int, ...]) -> bytes:  # fmt: skip
    """Nested maps -> a packetized layered file (format version 5): ``packets`` static-coded packets
    per layer over the same interleaved positions, and ``parity[l]`` parity packets for layer l."""
    _, hh, ww = encs[0].indices.shape
    n = max(1, min(int(packets), hh * ww, MAX_PACKETS // len(sizes)))
    assign = interleave.assignment(hh, ww, n)
    payloads = [[codec._code(encs[0].indices[:, assign == p], bundle, sizes[0], CodingMode.STATIC) for p in range(n)]]
    for i in range(1, len(sizes)):
        fine, coarse, counts = encs[i].indices[0], encs[i - 1].indices[0], bundle.table(sizes[i]).counts
        payloads.append([layers.encode_refinement(fine[assign == p], coarse[assign == p], ls, i - 1, counts=counts,
                                                  checksum=False) for p in range(n)])  # fmt: skip
    w, h = encs[0].image_size
    header = Header(bundle.model_id, sizes[-1], 1, w, h, CodingMode.STATIC)
    return layerpackets.pack(header, sizes, ls.tag, payloads, parity)


def layer_parity(parity: int | tuple[int, ...], sizes: tuple[int, ...]) -> tuple[int, ...]:
    """``--parity`` for a layered file: one count per layer, or one count for every layer."""
    out = (int(parity),) * len(sizes) if isinstance(parity, int) else tuple(parity)
    layerpackets.check(sizes, 1, out)
    return out


def compress(pixels: np.ndarray, bundle: Bundle, sizes: tuple[int, ...], mode: CodingMode | None = None,
             max_bytes: int | None = None, packets: int = 0,
             parity: int | tuple[int, ...] = 0) -> tuple[bytes, list[Encoded]]:  # fmt: skip
    """(H, W, 3) uint8 -> (layered file, the nested maps written). With ``max_bytes`` the file
    stops after the last layer that fits (byte for byte the prefix ``vqc trim`` would cut);
    ``VqcBudgetError`` when even the base layer does not. With ``packets`` a packetized layered
    file (static-coded; ``parity`` per layer), which ``max_bytes`` does not cut."""
    if packets:
        if mode not in (None, CodingMode.STATIC):
            raise VqcUsageError("packetized files are static-coded: each packet decodes on its own (--entropy static)")
        parity = layer_parity(parity, sizes)
        ls, _ = check(bundle, sizes, CodingMode.STATIC)
        encs = maps_for(codec.encode_latent(pixels, bundle), bundle, ls, len(sizes))
        data = pack_packets(encs, bundle, ls, sizes, packets, parity)
        if max_bytes is not None and len(data) > max_bytes:
            raise VqcBudgetError(max_bytes, len(data), f"the packetized layered file needs {len(data)} bytes, "
                                 f"more than {max_bytes}")  # fmt: skip
        return data, encs
    if any(layer_parity(parity, sizes)):
        raise VqcUsageError("--parity adds parity packets to a packetized file: give --packets N too")
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
                                                 bundle.context_levels,
                                                 paired=header.mode == CodingMode.INT8_PAIRED))  # fmt: skip
    except VqcUsageError as e:
        raise VqcFormatError(f"layered file: {e}") from None
    n = len(maps)
    padded = (ww * bundle.stride, hh * bundle.stride)
    enc = Encoded(maps[-1][None], (header.width, header.height), padded, sizes[n - 1], header.model_id,
                  book=ls.draw_books[n - 1])  # fmt: skip
    return enc, bundle, LossReport(layers=sizes, layers_decoded=n, layer_problem=scan.problem)


def _layer_set_for(bundle: Bundle, sizes: tuple[int, ...], tag: int) -> layers.LayerSet:
    try:
        ls = bundle.layer_set(sizes)
    except VqcUsageError as e:
        raise VqcModelError(f"layered file: {e}") from None
    if ls.tag != tag:
        raise VqcModelError(f"file was layered with other nested books (tag {tag:04x}, model {bundle.name!r} "
                            f"has {ls.tag:04x})")  # fmt: skip
    return ls


def unpack_packets(data: bytes, model: Bundle | str | None, max_pixels: int,
                   method: str = recovery.DEFAULT) -> tuple[Encoded, Bundle, LossReport]:  # fmt: skip
    """A packetized layered file, whatever was lost -> (what to draw, bundle, report).

    Layer by layer, a data packet is decoded when it arrived (or its layer's parity rebuilt it) and
    the packet of the layer below with the same positions was decoded too; each position is then
    drawn from the deepest layer decoded there (the coarser layers' books for the positions whose
    refinements were lost). Positions whose base-layer packet is lost are predicted at the base
    layer's K with ``method``, as in a single-layer packetized file, and drawn from the prediction."""
    scan = layerpackets.scan(data)
    header, sizes = scan.header, scan.sizes
    if header.width * header.height > max_pixels:
        raise VqcFormatError(f"file declares {header.width}x{header.height} pixels, above the limit of {max_pixels}")
    bundle = codec._bundle_for(header, model)
    if header.m != 1 or bundle.m != 1:
        raise VqcFormatError(f"layered file with m={header.m}; model {bundle.name!r} has m = {bundle.m}")
    ls = _layer_set_for(bundle, sizes, scan.tag)
    hh, ww = _latent_hw(header.width, header.height, bundle.stride)
    n = scan.packets
    if n > hh * ww:
        raise VqcFormatError(f"{n} packets for {hh * ww} positions")
    assign = interleave.assignment(hh, ww, n)
    maps = [np.zeros((hh, ww), dtype=np.int64) for _ in sizes]
    known = [np.zeros(n, dtype=bool) for _ in sizes]  # per layer: which packets were decoded
    for p, payload in scan.layers[0].payloads.items():
        sel = assign == p
        try:
            maps[0][sel] = codec._uncode(payload, bundle, sizes[0], CodingMode.STATIC, int(sel.sum()))
        except VqcFormatError:
            continue
        known[0][p] = True
    for i in range(1, len(sizes)):
        counts = bundle.table(sizes[i]).counts
        for p, payload in scan.layers[i].payloads.items():
            if not known[i - 1][p]:
                continue  # its parents were lost: the refinement cannot be read
            sel = assign == p
            try:
                maps[i][sel] = layers.decode_refinement(payload, maps[i - 1][sel], ls, i - 1, counts=counts,
                                                        checksum=False)  # fmt: skip
            except VqcFormatError:
                continue
            known[i][p] = True
    if not known[0].any():
        raise VqcFormatError(f"every packet of the base layer was lost ({n} of {n}): nothing to decode")
    depth = np.full((hh, ww), -1)
    for i in range(len(sizes)):
        depth[known[i][assign]] = i
    q = bundle.model.quantize
    missing = depth < 0
    base = maps[0][None]
    method, net, label = codec._recovery_choice(bundle, method, bool(missing.any()))
    base, soft = recovery.recover_soft(base, missing, q.plane_codes(ls.draw_books[0]), bundle.table(sizes[0]).counts,
                                       method, q.plane_cosine, net, sizes[0])  # fmt: skip
    top = len(sizes) - 1
    holes = depth < top
    vectors = torch.zeros(int(holes.sum()), q.codes(ls.draw_books[0]).shape[1])
    hole_depth = depth[holes]
    for i in range(top):
        at = hole_depth == i
        vectors[torch.from_numpy(at)] = q.codes(ls.draw_books[i]).float()[torch.from_numpy(maps[i][holes][at])]
    lost = hole_depth < 0
    if lost.any():
        recovered = q.codes(ls.draw_books[0]).float()[torch.from_numpy(base[0][holes][lost])]
        if soft is not None:
            recovered = soft[torch.from_numpy(holes)][torch.from_numpy(lost)].float()
        vectors[torch.from_numpy(lost)] = recovered
    padded = (ww * bundle.stride, hh * bundle.stride)
    enc = Encoded(np.where(holes, 0, maps[top])[None], (header.width, header.height), padded, sizes[top],
                  header.model_id, (holes, vectors.numpy()) if holes.any() else None, book=ls.draw_books[top])  # fmt: skip
    lost_packets = tuple(sorted(set(range(n)) - set(scan.layers[0].payloads)))
    report = LossReport(n, lost_packets, scan.damaged, scan.duplicates, int(missing.sum()), hh * ww, label,
                        scan.layers[0].parity, scan.layers[0].parity_arrived, scan.layers[0].rebuilt,
                        scan.layers[0].parity_mismatch, layers=sizes, layers_decoded=sum(bool((depth >= i).all()) for i in range(len(sizes))),
                        layer_problem="", layer_depth=tuple(int((depth >= i).sum()) for i in range(len(sizes))),
                        layer_packets=tuple((p.data_arrived, len(p.rebuilt), p.parity_arrived) for p in scan.layers))  # fmt: skip
    return enc, bundle, report
