"""The encode/decode pipeline: image -> indices -> bytes, and back. No byte layout, no layer shapes.

encode: pixels -> pad to the model stride (reflect) -> encoder -> nearest code of the K-book
        -> entropy coder -> container
decode: container -> entropy decoder -> code vectors -> decoder -> crop -> pixels
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

from vqcodec import container, entropy, interleave, layerfile, layerpackets, recovery
from vqcodec import device as devices
from vqcodec.container import CodingMode, Header
from vqcodec.errors import VqcBudgetError, VqcFormatError, VqcImageError, VqcModelError, VqcUsageError
from vqcodec.fileinfo import FileInfo as FileInfo  # re-exported: FileInfo and info lived here
from vqcodec.fileinfo import _latent_hw
from vqcodec.fileinfo import info as info
from vqcodec.imageio import MAX_PIXELS, WHOLE_MAX_PIXELS, check_size, pad_to_multiple
from vqcodec.nets import openvino_engine
from vqcodec.zoo import Bundle, find_by_id, load_model

STREAM_PIXELS = 1 << 21
"""Images above this many (padded) pixels run through the network tile by tile (``nets.streamed``:
same output, memory bounded by a tile); smaller ones run whole, which is faster. Kodak-size
photos (0.4 MP) never stream."""

_progress: ContextVar[Callable[[str, float], None] | None] = ContextVar("vqc_progress", default=None)


@contextmanager
def progress(callback: Callable[[str, float], None]) -> Iterator[None]:
    """Within this block, streamed (big-image) encodes and decodes report ``callback(stage, share
    done)`` as their tiles finish: what a progress bar needs. Per thread/task (a context variable)."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


def _tracker(stage: str, total: int) -> Callable[[int], None] | None:
    callback = _progress.get()
    if callback is None:
        return None
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        callback(stage, min(1.0, done[0] / total))

    return advance


def streams(bundle: Bundle, width: int, height: int) -> bool:
    """Whether an image of this (padded) size runs tile by tile: big, and a model that can."""
    return width * height > STREAM_PIXELS and bundle.model.config.backbone == "taef2"


def _check_whole(bundle: Bundle, width: int, height: int, error: type[Exception]) -> None:
    """Models that cannot stream (the vqgan backbone: global attention) keep the old size limit."""
    if bundle.model.config.backbone != "taef2" and width * height > WHOLE_MAX_PIXELS:
        raise error(f"{width}x{height} pixels: model {bundle.name!r} runs whole images only, up to "
                    f"{WHOLE_MAX_PIXELS} pixels (models of the taef2 backbone, like vqc-gen, run in tiles)")  # fmt: skip


@dataclass(frozen=True)
class Encoded:
    """An index map and what is needed to turn it back into an image."""

    indices: np.ndarray  # (m, h, w) int64
    image_size: tuple[int, int]  # (width, height) of the original image
    padded_size: tuple[int, int]  # (width, height) after padding to the stride
    codebook_size: int
    model_id: int
    # latent vectors to decode at some positions instead of their codes: (mask (h, w), vectors (n, d)),
    # set by the ``masked`` recovery (expected code vectors of the lost indices), else None
    hole_latents: tuple[np.ndarray, np.ndarray] | None = None
    # the book the indices point into when it is not the bundle's K-book: a coarse layer of a
    # layered file (``vqcodec.layers``), else None
    book: torch.Tensor | None = None


@dataclass(frozen=True)
class LossReport:
    """What a decode found missing and how it was filled (all zero for files without packets):
    ``vqcodec.decode_report(...).report``, and the line ``vqc decode`` prints (``summary``).

    ``lost_packets`` are the data packets still missing after parity did what it could
    (``rebuilt`` lists those it rebuilt exactly); their indices, ``missing_positions`` of the
    map's ``positions``, were predicted with ``method``."""

    packets: int = 0  # 0: not packetized
    lost_packets: tuple[int, ...] = ()
    damaged_regions: int = 0
    duplicates: int = 0
    missing_positions: int = 0
    positions: int = 0
    method: str = ""
    parity: int = 0  # parity packets declared
    parity_arrived: int = 0
    rebuilt: tuple[int, ...] = ()  # data packets rebuilt from parity
    parity_mismatch: bool = False
    layers: tuple[int, ...] = ()  # a layered file: the K of every declared layer
    layers_decoded: int = 0  # how many of them were complete and drawn
    layer_problem: str = ""  # why the next layer was not drawn ("" when every layer was)
    # packetized layered files: positions drawn at each layer or deeper, and per layer (data packets
    # that arrived, packets rebuilt from its parity, parity packets that arrived)
    layer_depth: tuple[int, ...] = ()
    layer_packets: tuple[tuple[int, int, int], ...] = ()

    @property
    def intact(self) -> bool:
        return self.missing_positions == 0 and (not self.layer_depth or self.layer_depth[-1] == self.positions)

    def _layer_packets_summary(self) -> str:
        parts = []
        for i, (arrived, rebuilt, parity) in enumerate(self.layer_packets):
            s = f"layer {i + 1} (K={self.layers[i]}) {arrived}/{self.packets} packets"
            s += f" + {rebuilt} rebuilt from {parity} parity" if rebuilt else ""
            parts.append(s)
        drawn = [d - (self.layer_depth[i + 1] if i + 1 < len(self.layer_depth) else 0)
                 for i, d in enumerate(self.layer_depth)]  # fmt: skip
        at = ", ".join(f"K={k} {100 * d / self.positions:.0f} %" for k, d in zip(self.layers, drawn, strict=True) if d)
        s = "; ".join(parts) + f"; positions drawn at {at or 'no layer'}"
        if self.missing_positions:
            s += (f"; {self.missing_positions}/{self.positions} base indices "
                  f"({100 * self.missing_positions / self.positions:.0f}%) recovered with '{self.method}'")  # fmt: skip
        return s

    @property
    def received(self) -> int:
        """Data packets that arrived intact themselves (not rebuilt)."""
        return self.packets - len(self.lost_packets) - len(self.rebuilt)

    def summary(self) -> str:
        if self.layer_packets:
            return self._layer_packets_summary()
        if self.layers:
            n, sizes = self.layers_decoded, self.layers
            s = f"layer {n} of {len(sizes)} drawn (K={sizes[n - 1]}; layers {','.join(map(str, sizes))})"
            return s + (f": {self.layer_problem}" if self.layer_problem else "")
        if not self.packets:
            return "not packetized"
        lost = len(self.lost_packets)
        s = f"{self.received}/{self.packets} packets received, {lost + len(self.rebuilt)} lost"
        if self.parity:
            s += f"; {self.parity_arrived}/{self.parity} parity packets received"
            if self.rebuilt:
                s += f", {len(self.rebuilt)} lost packets rebuilt exactly"
            if self.parity_mismatch:
                s += ", parity disagreed with the data (not used)"
        if self.damaged_regions:
            s += f" ({self.damaged_regions} damaged regions dropped)"
        if self.missing_positions:
            s += (f"; {self.missing_positions}/{self.positions} indices "
                  f"({100 * self.missing_positions / self.positions:.0f}%) recovered with '{self.method}'")  # fmt: skip
        return s


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    return t / 127.5 - 1.0


def _to_pixels(x: torch.Tensor) -> np.ndarray:
    x = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).contiguous().numpy()


@dataclass(frozen=True)
class Latent:
    """The encoder's output for one image, before quantization: what every K shares.

    Quantizing it with each K-book gives that K's index map, so trying several K (``fit``) pays
    for the encoder network once."""

    z: torch.Tensor  # (1, d, h, w) float32
    image_size: tuple[int, int]  # (width, height) of the original image
    padded_size: tuple[int, int]  # (width, height) after padding to the stride


def _on_device(bundle: Bundle, dev: torch.device, run: Callable | None = None):
    """The bundle's autoencoder moved to ``dev`` (in place: the bundle is cached per process); with
    ``run``, the float32 CPU result of ``run(model)`` there, whole-image (a GPU has the memory; the
    tile-by-tile path is for CPUs), and a GPU out of memory as a one-line error."""
    model = bundle.model
    if next(model.parameters()).device != dev:
        model.to(dev)
    if run is None:
        return model
    try:
        return run(model).float().cpu()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise VqcImageError(f"the image does not fit in the memory of {dev}: use --device cpu") from None


def _tile_runner(model, part: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """OpenVINO for a big photo's full-resolution layers on a tile (``openvino_engine.TILE_PARTS``),
    its output in the dtype and layout PyTorch's layers give (bf16 under the bf16 autocast), so
    that the PyTorch layers between them see what they would; None keeps PyTorch."""
    run = openvino_engine.runner(model, part)
    if run is None:
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32

    def tile(x: torch.Tensor) -> torch.Tensor:
        return run(x).to(dtype).contiguous(memory_format=torch.channels_last)

    return tile


@torch.inference_mode()
def encode_latent(pixels: np.ndarray, bundle: Bundle) -> Latent:
    """(H, W, 3) uint8 -> the encoder's latent of the image padded to the stride."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise VqcUsageError("pixels must be an (H, W, 3) uint8 array")
    h, w = pixels.shape[:2]
    _check_whole(bundle, w, h, VqcImageError)
    padded = pad_to_multiple(pixels, bundle.stride)
    ph, pw = padded.shape[:2]
    dev = devices.current()
    if dev.type != "cpu":
        return Latent(_on_device(bundle, dev, lambda m: m.encode_latent(_to_tensor(padded).to(dev))), (w, h), (pw, ph))
    model = _on_device(bundle, dev)
    with model.autocast():
        if streams(bundle, pw, ph):
            from vqcodec.nets import streamed

            image = torch.from_numpy(padded).permute(2, 0, 1)[None]  # uint8, converted tile by tile
            z = streamed.encode_latent(model, image, progress=_tracker("encoding", pw * ph),
                                       head=_tile_runner(model, "head")).float()  # fmt: skip
        elif (fast := openvino_engine.runner(model, "encoder")) is not None:
            z = fast(_to_tensor(padded))
        else:
            z = model.encode_latent(_to_tensor(padded).contiguous(memory_format=model.memory_format)).float()
    return Latent(z, (w, h), (pw, ph))


@torch.inference_mode()
def quantize(latent: Latent, bundle: Bundle, codebook_size: int) -> Encoded:
    """Latent -> index map with the K-codebook (nearest codes, as the encoder would)."""
    book = bundle.codebook(codebook_size)
    idx = bundle.model.quantize.quantize(latent.z, book)[0].numpy().astype(np.int64)
    return Encoded(idx, latent.image_size, latent.padded_size, codebook_size, bundle.model_id)


def analyze(pixels: np.ndarray, bundle: Bundle, codebook_size: int) -> Encoded:
    """(H, W, 3) uint8 -> index map with the K-codebook (no entropy coding)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise VqcUsageError("pixels must be an (H, W, 3) uint8 array")
    bundle.codebook(codebook_size)  # an unavailable K fails before the encoder runs
    return quantize(encode_latent(pixels, bundle), bundle, codebook_size)


def fit(
    latent: Latent, bundle: Bundle, max_bytes: int, pack_fn: Callable[[Encoded], bytes], sizes: list[int] | None = None
) -> tuple[bytes, Encoded]:
    """The best quality within ``max_bytes``: the file of the largest K whose whole file fits.

    ``pack_fn`` turns an index map into the final file bytes (coding mode, packets: the
    caller's choice), so the budget holds for exactly what gets written. The file size grows
    with K in practice, so a binary search over the sorted K list packs about log2(#K) of
    them; every size it compares is measured, so the choice always fits. Should the sizes not
    be monotone, the larger neighbours of the choice are checked too (free when they were
    measured), and when no probe fits every K is tried before giving up, so "nothing fits"
    is never a search artefact. Raises ``VqcBudgetError`` naming the smallest size reached.
    """
    max_bytes = check_budget(max_bytes)
    ks = sorted(bundle.codebook_sizes if sizes is None else sizes)
    if not ks:
        raise VqcUsageError(f"model {bundle.name!r} offers no codebook size to choose from")
    tried: dict[int, tuple[bytes, Encoded]] = {}

    def size(i: int) -> int:
        if i not in tried:
            enc = quantize(latent, bundle, ks[i])
            tried[i] = (pack_fn(enc), enc)
        return len(tried[i][0])

    best, lo, hi = -1, 0, len(ks) - 1
    while lo <= hi:  # largest i with size(i) <= max_bytes, if sizes grow with K
        mid = (lo + hi) // 2
        if size(mid) <= max_bytes:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best < 0:  # even K = ks[0] is too big; make sure no other K fits before saying so
        best = max((i for i in range(len(ks)) if size(i) <= max_bytes), default=-1)
        if best < 0:
            raise VqcBudgetError(max_bytes, min(size(i) for i in range(len(ks))))
    while best + 1 < len(ks) and size(best + 1) <= max_bytes:  # not monotone after all: climb
        best += 1
    return tried[best]


@torch.inference_mode()
def synthesize(enc: Encoded, bundle: Bundle) -> np.ndarray:
    """Index map -> (H, W, 3) uint8 image cropped to the original size."""
    book = bundle.codebook(enc.codebook_size) if enc.book is None else enc.book
    idx = torch.from_numpy(enc.indices)[None]
    z = bundle.model.quantize.dequantize(idx, book)
    if enc.hole_latents is not None:
        mask, vectors = enc.hole_latents
        z[0][:, torch.from_numpy(mask)] = torch.from_numpy(vectors).to(z).t()
    w, h = enc.image_size
    _check_whole(bundle, w, h, VqcFormatError)
    dev = devices.current()
    if dev.type != "cpu":
        return _to_pixels(_on_device(bundle, dev, lambda m: m.decode_latent(z.to(dev))))[:h, :w]
    model = _on_device(bundle, dev)
    z = z.contiguous(memory_format=model.memory_format)
    pw, ph = z.shape[3] * bundle.stride, z.shape[2] * bundle.stride
    with model.autocast():
        if streams(bundle, pw, ph):
            from vqcodec.nets import streamed

            image = streamed.decode_latent(model, z, progress=_tracker("decoding", pw * ph // 64),
                                           tail=_tile_runner(model, "tail"))  # fmt: skip
            return image[0, :, :h, :w].permute(1, 2, 0).contiguous().numpy()
        fast = openvino_engine.runner(model, "decoder")
        x = fast(z) if fast is not None else model.decode_latent(z).float()
    return _to_pixels(x)[:h, :w]


def _context_net(bundle: Bundle, k: int, exact: bool = False):
    """The context model of coding mode ``exact`` (integer) or ``context`` (float)."""
    if bundle.m != 1:
        raise VqcUsageError(
            f"context coding models m = 1 index maps; model {bundle.name!r} has m = {bundle.m}: use --entropy static"
        )
    net = bundle.exact_transformer("masked") if exact else bundle.recovery_model
    if exact and net is not None:
        net.to(devices.current())
    if net is None or k not in net.config.sizes:
        what = "integer-exact context model" if exact else "context model"
        raise VqcUsageError(f"model {bundle.name!r} has no {what} for K={k} (train one: vqc train-recovery)")
    return net


def _code(indices: np.ndarray, bundle: Bundle, k: int, mode: CodingMode) -> bytes:
    if mode == CodingMode.STATIC:
        planes = bundle.plane_tables(k)
        if planes:
            return entropy.encode_planes(indices, planes)
        return entropy.encode_static(indices, bundle.table(k))
    if mode == CodingMode.RAW:
        return entropy.encode_raw(indices, k)
    if mode == CodingMode.CONTEXT:
        from vqcodec import context

        return context.encode_context(indices, _context_net(bundle, k), k, bundle.context_tag, bundle.context_levels)
    if mode == CodingMode.EXACT:
        from vqcodec import context

        net = _context_net(bundle, k, exact=True)
        return context.encode_context(indices, net, k, bundle.exact_tag, bundle.context_levels)
    if mode in container.INT8_MODES:
        from vqcodec import context

        return context.encode_context(indices, _int8_net(bundle, k), k, context.int8_tag(bundle), bundle.context_levels,
                                      paired=mode == CodingMode.INT8_PAIRED)  # fmt: skip
    raise VqcUsageError(f"coding mode {mode.name} is not supported by this encoder")


def _uncode(payload: bytes, bundle: Bundle, k: int, mode: CodingMode, count: int, shape=None) -> np.ndarray:
    if mode == CodingMode.STATIC:
        planes = bundle.plane_tables(k)
        if planes:
            return entropy.decode_planes(payload, planes, count)
        return entropy.decode_static(payload, bundle.table(k), count)
    if mode == CodingMode.RAW:
        return entropy.decode_raw(payload, k, count)
    if mode in container.INT8_MODES and shape is not None:
        from vqcodec import context

        try:
            net = _int8_net(bundle, k)
        except VqcUsageError as e:
            raise VqcFormatError(f"context-coded file: {e}") from None
        tag = context.int8_tag(bundle)
        return context.decode_context(payload, net, k, *shape, tag=tag, levels=bundle.context_levels,
                                      paired=mode == CodingMode.INT8_PAIRED).ravel()  # fmt: skip
    if mode in (CodingMode.CONTEXT, CodingMode.EXACT) and shape is not None:
        from vqcodec import context

        exact = mode == CodingMode.EXACT
        try:
            net = _context_net(bundle, k, exact)
        except VqcUsageError as e:
            raise VqcFormatError(f"context-coded file: {e}") from None
        tag = bundle.exact_tag if exact else bundle.context_tag
        return context.decode_context(payload, net, k, *shape, tag=tag, levels=bundle.context_levels).ravel()
    raise VqcFormatError(f"coding mode {mode.name} is not supported here")


def _int8_net(bundle: Bundle, k: int):
    """The int8 context model (coding mode ``int8``) on the current device, or a usage error."""
    from vqcodec import context

    net = context.int8_model(bundle) if bundle.m == 1 else None
    if net is None or k not in net.config.sizes:
        raise VqcUsageError(f"model {bundle.name!r} has no int8 context model for K={k}: use --entropy exact")
    return net.to(devices.current())


def best_mode(bundle: Bundle, k: int) -> CodingMode:
    """Integer context coding when the bundle has that model for K (int8 where shipped, else the
    int16 ``exact``), else static range coding. The float context model is never chosen by
    itself: its files may not decode on another computer (``context``)."""
    from vqcodec import context

    int8 = context.has_int8(bundle)
    if bundle.m != 1 or not (int8 or bundle.has_exact("masked")):
        return CodingMode.STATIC
    if k not in bundle.transformer("masked").config.sizes:  # the int8 and int16 models share its config
        return CodingMode.STATIC
    return CodingMode.INT8_PAIRED if int8 else CodingMode.EXACT


def pack(enc: Encoded, bundle: Bundle, mode: CodingMode = CodingMode.STATIC, packets: int = 0,
         parity: int = 0) -> bytes:  # fmt: skip
    """Entropy-code an index map and wrap it in a .vqc container.

    ``packets`` > 0 writes a packetized (version 2) file: the positions are interleaved over that
    many independently decodable packets (capped at the number of positions and at 255).
    ``parity`` > 0 adds that many erasure-coded parity packets (version 3): any ``packets`` of the
    packets + parity rebuild the file exactly.
    """
    if parity and not packets:
        raise VqcUsageError("--parity adds parity packets to a packetized file: give --packets N too")
    k = enc.codebook_size
    w, h = enc.image_size
    header = Header(enc.model_id, k, int(enc.indices.shape[0]), w, h, mode)
    if not packets:
        return container.pack(header, _code(enc.indices, bundle, k, mode))
    if mode in container.CONTEXT_MODES:
        raise VqcUsageError("context coding needs the whole map: use --entropy static with --packets")
    _, hh, ww = enc.indices.shape
    n = max(1, min(int(packets), hh * ww, container.MAX_PACKETS))
    assign = interleave.assignment(hh, ww, n)
    payloads = [_code(enc.indices[:, assign == p], bundle, k, mode) for p in range(n)]
    container.check_parity(n, parity)
    version = container.PARITY_VERSION if parity else container.PACKET_VERSION
    return container.pack_packets(Header(enc.model_id, k, header.m, w, h, mode, version), payloads, parity)


def encode(
    pixels: np.ndarray,
    codebook_size: int = 64,
    model: Bundle | str | None = None,
    mode: CodingMode | None = None,
    max_pixels: int = MAX_PIXELS,
    device: str | None = None,
) -> bytes:
    """Compress an (H, W, 3) uint8 RGB image to .vqc bytes. ``device``: where the networks run
    (``vqcodec.device``: auto, cpu, cuda; None = the enclosing ``device.using`` block, else the CPU).

    >>> import numpy as np
    >>> encode(np.zeros((40, 56, 3), np.uint8), codebook_size=64)[:3]
    b'VQC'
    """
    bundle = model if isinstance(model, Bundle) else load_model(model)
    check_size(pixels.shape[1], pixels.shape[0], max_pixels)
    mode = best_mode(bundle, codebook_size) if mode is None else mode
    with _maybe_using(device):
        return pack(analyze(pixels, bundle, codebook_size), bundle, mode)


@contextmanager
def _maybe_using(device: str | None) -> Iterator[None]:
    """``device.using(device)``, or nothing when ``device`` is None (keep the caller's choice)."""
    if device is None:
        yield
        return
    with devices.using(device):
        yield


def check_budget(max_bytes: int) -> int:
    """A ``max_bytes`` value, checked before any work: a positive whole number of bytes."""
    try:
        n = operator.index(max_bytes)  # ints and numpy integers; not floats, strings or bools
    except TypeError:
        n = 0
    if isinstance(max_bytes, bool) or n < 1:
        raise VqcUsageError(f"max_bytes must be a positive whole number of bytes, not {max_bytes!r}")
    return n


def budget_sizes(bundle: Bundle, mode: CodingMode | None) -> list[int]:
    """The K a byte budget may choose from: every K, but for forced context coding only those
    with a context model (the others cannot be coded that way at all)."""
    ks = bundle.codebook_sizes
    if mode not in container.CONTEXT_MODES:
        return ks
    exact = mode == CodingMode.EXACT
    int8 = mode in container.INT8_MODES
    if bundle.m != 1:
        net = None
    elif int8:
        from vqcodec import context

        net = context.int8_model(bundle)
    else:
        net = bundle.exact_transformer("masked") if exact else bundle.recovery_model
    usable = [k for k in ks if net is not None and k in net.config.sizes]
    if not usable and int8:
        _int8_net(bundle, ks[0])  # raises the usual "no context model" usage error
    elif not usable:
        _context_net(bundle, ks[0], exact)  # the same for the int16 and float models
    return usable


def mode_for(bundle: Bundle, k: int, forced: CodingMode | None, packetized: bool) -> CodingMode:
    """The coding mode of an encode at K: ``forced`` when given, else static for packetized files
    (packets decode on their own) and ``best_mode`` otherwise."""
    if forced is not None:
        return forced
    return CodingMode.STATIC if packetized else best_mode(bundle, k)


@dataclass(frozen=True)
class PackOptions:
    """How an index map becomes file bytes: what ``vqc encode``'s --entropy, --packets and --parity
    decide. One object, so that every door that writes files (``vqc encode``, ``vqc bulk encode``)
    makes the same bytes from the same options."""

    mode: CodingMode | None = None  # forced coding mode; None: ``mode_for`` picks per K
    packets: int = 0  # a packet count (--packets 16)
    packet_bytes: int = 0  # or a target packet size (--packets 200B): the count follows the payload
    parity: int = 0  # erasure-coded parity packets (with packets)

    @property
    def packetized(self) -> bool:
        return bool(self.packets or self.packet_bytes)


def pack_with(enc: Encoded, bundle: Bundle, options: PackOptions) -> bytes:
    """The file to write for an index map under ``options``: what --max-bytes measures against."""
    mode = mode_for(bundle, enc.codebook_size, options.mode, options.packetized)
    n = options.packets
    if options.packet_bytes:
        payload = len(pack(enc, bundle, mode)) - 18  # about the unpacketized payload
        n = interleave.packets_for_bytes(options.packet_bytes - container.PACKET_OVERHEAD, payload)
    return pack(enc, bundle, mode, n, options.parity)


def compress(
    pixels: np.ndarray,
    bundle: Bundle,
    codebook_size: int = 64,
    max_bytes: int | None = None,
    options: PackOptions = PackOptions(),
    sizes: list[int] | None = None,
    effort: int = 1,
) -> tuple[bytes, Encoded]:
    """(H, W, 3) uint8 -> (file bytes, index map): at ``codebook_size``, or with ``max_bytes`` the
    largest K whose whole file fits (``fit``; ``sizes`` the K to choose from, default
    ``budget_sizes``). Runs on the enclosing ``device.using`` device.

    ``effort`` > 1 then searches the index map against the decoder (``vqcodec.effort``) for a
    better picture in at most the same bytes: those of the effort-1 file, or ``max_bytes``."""
    if effort != 1:
        check_effort_model(bundle, effort)
        from vqcodec import context

        with context.remembering():  # the search prices and codes the same maps: one context pass each
            return _compress(pixels, bundle, codebook_size, max_bytes, options, sizes, effort)
    return _compress(pixels, bundle, codebook_size, max_bytes, options, sizes, effort)


def _compress(pixels: np.ndarray, bundle: Bundle, codebook_size: int, max_bytes: int | None,
              options: PackOptions, sizes: list[int] | None, effort: int) -> tuple[bytes, Encoded]:  # fmt: skip
    if max_bytes is None:
        bundle.codebook(codebook_size)  # an unavailable K fails before the encoder runs
        latent = encode_latent(pixels, bundle)
        enc = quantize(latent, bundle, codebook_size)
        data = pack_with(enc, bundle, options)
        budget = len(data)
    else:
        ks = budget_sizes(bundle, options.mode) if sizes is None else sizes
        latent = encode_latent(pixels, bundle)
        data, enc = fit(latent, bundle, max_bytes, lambda e: pack_with(e, bundle, options), ks)
        budget = max_bytes
    if effort == 1:
        return data, enc
    return searched(pixels, latent, enc, data, bundle, options, budget, effort)


def check_effort_model(bundle: Bundle, effort: int) -> None:
    """Effort above 1 searches single-plane VQ maps (``m`` = 1 models): a usage error otherwise."""
    from vqcodec.options import check_effort

    check_effort(effort)
    if bundle.m != 1 or not hasattr(bundle.model.quantize, "codes"):
        raise VqcUsageError(f"--effort above 1 searches single-plane index maps; model {bundle.name!r} has "
                            f"m = {bundle.m}: use --effort 1")  # fmt: skip


def _rate_model(bundle: Bundle, k: int, mode: CodingMode):
    """What each code costs at each position in coding mode ``mode`` (``effort.RateTable``)."""
    from vqcodec import effort

    if mode in container.INT8_MODES:
        return effort.context_rate(_int8_net(bundle, k), k, bundle.context_levels, mode == CodingMode.INT8_PAIRED)
    if mode in (CodingMode.EXACT, CodingMode.CONTEXT):
        return effort.context_rate(_context_net(bundle, k, mode == CodingMode.EXACT), k, bundle.context_levels)
    if mode == CodingMode.RAW:
        return effort.static_rate(np.full(k, 1.0 / k))
    return effort.static_rate(bundle.table(k).probabilities())


def searched(pixels: np.ndarray, latent: Latent, enc: Encoded, nearest: bytes, bundle: Bundle,
             options: PackOptions, max_bytes: int, effort: int) -> tuple[bytes, Encoded]:  # fmt: skip
    """The effort search's file for ``enc``, the nearest-code map whose file ``nearest`` fits
    ``max_bytes``."""
    from vqcodec import effort as search

    k = enc.codebook_size
    mode = mode_for(bundle, k, options.mode, options.packetized)
    model = bundle.model
    dev = next(model.parameters()).device
    image = _to_tensor(pad_to_multiple(pixels, bundle.stride)).to(dev)
    codes = model.quantize.codes(bundle.codebook(k)).to(dev)

    def with_map(q: np.ndarray) -> Encoded:
        return Encoded(q[None].astype(np.int64), enc.image_size, enc.padded_size, k, enc.model_id)

    packed: dict[bytes, bytes] = {enc.indices[0].tobytes(): nearest}  # each map is coded once

    def file_of(q: np.ndarray) -> bytes:
        key = q.astype(np.int64).tobytes()
        if key not in packed:
            packed[key] = pack_with(with_map(q), bundle, options)
        return packed[key]

    def size_of(q: np.ndarray) -> int:
        return len(file_of(q))

    with torch.enable_grad():
        out = search.improve(model, latent.z.to(dev), codes, image, enc.image_size, enc.indices[0],
                             _rate_model(bundle, k, mode), size_of, max_bytes, effort)  # fmt: skip
    return file_of(out), with_map(out)


def encode_within(
    pixels: np.ndarray,
    max_bytes: int,
    model: Bundle | str | None = None,
    mode: CodingMode | None = None,
    max_pixels: int = MAX_PIXELS,
    packets: int = 0,
    device: str | None = None,
) -> bytes:
    """Compress with the largest K whose whole .vqc file is at most ``max_bytes`` (``fit``).

    ``mode`` None picks per K what ``encode`` would (``best_mode``; static when packetized).
    ``packets`` > 0 keeps that packet count whatever K is chosen: the budget covers the whole
    packetized file. Raises ``VqcBudgetError`` when even the smallest K does not fit.
    """
    max_bytes = check_budget(max_bytes)
    bundle = model if isinstance(model, Bundle) else load_model(model)
    check_size(pixels.shape[1], pixels.shape[0], max_pixels)
    sizes = budget_sizes(bundle, mode)

    def pack_fn(enc: Encoded) -> bytes:
        return pack(enc, bundle, mode_for(bundle, enc.codebook_size, mode, packets > 0), packets)

    with _maybe_using(device):
        return fit(encode_latent(pixels, bundle), bundle, max_bytes, pack_fn, sizes)[0]


def unpack(data: bytes, model: Bundle | str | None = None, max_pixels: int = MAX_PIXELS) -> tuple[Encoded, Bundle]:
    """Parse a .vqc byte string and entropy-decode its index map."""
    header, payload = container.unpack(data)
    if header.width * header.height > max_pixels:
        raise VqcFormatError(f"file declares {header.width}x{header.height} pixels, above the limit of {max_pixels}")
    bundle = _bundle_for(header, model)
    if header.m != bundle.m:
        raise VqcFormatError(f"file has m={header.m} indices per position, model has {bundle.m}")
    hh, ww = _latent_hw(header.width, header.height, bundle.stride)
    count = header.m * hh * ww
    flat = _uncode(payload, bundle, _k(header, bundle), header.mode, count, (header.m, hh, ww))
    idx = flat.reshape(header.m, hh, ww)
    padded = (ww * bundle.stride, hh * bundle.stride)
    enc = Encoded(idx, (header.width, header.height), padded, header.codebook_size, header.model_id)
    return enc, bundle


def _k(header: Header, bundle: Bundle) -> int:
    if header.codebook_size not in bundle.codebooks:
        raise VqcFormatError(f"file uses K={header.codebook_size}, which model {bundle.name!r} lacks")
    return header.codebook_size


def _bundle_for(header: Header, model: Bundle | str | None) -> Bundle:
    if model is None:
        bundle = load_model(find_by_id(header.model_id))
    else:
        bundle = model if isinstance(model, Bundle) else load_model(model)
    if bundle.model_id != header.model_id:
        raise VqcModelError(
            f"file was made with model id {header.model_id:08x}, but model {bundle.name!r} has id {bundle.model_id:08x}"
        )
    _k(header, bundle)
    return bundle


def unpack_packets(
    data: bytes, model: Bundle | str | None = None, max_pixels: int = MAX_PIXELS, method: str = recovery.DEFAULT
) -> tuple[Encoded, Bundle, LossReport]:
    """Parse a packetized file whatever was lost or damaged, and fill the holes with ``method``."""
    scan = container.scan_packets(data)
    header = scan.header
    if header.width * header.height > max_pixels:
        raise VqcFormatError(f"file declares {header.width}x{header.height} pixels, above the limit of {max_pixels}")
    bundle = _bundle_for(header, model)
    if header.m != bundle.m:
        raise VqcFormatError(f"file has m={header.m} indices per position, model has {bundle.m}")
    k = header.codebook_size
    hh, ww = _latent_hw(header.width, header.height, bundle.stride)
    n = scan.packets
    if n > hh * ww:
        raise VqcFormatError(f"{n} packets for {hh * ww} positions")
    assign = interleave.assignment(hh, ww, n)
    idx = np.zeros((header.m, hh, ww), dtype=np.int64)
    missing = np.ones((hh, ww), dtype=bool)
    undecodable = []
    for p, payload in scan.payloads.items():
        sel = assign == p
        try:
            vals = _uncode(payload, bundle, k, header.mode, header.m * int(sel.sum()))
        except VqcFormatError:
            undecodable.append(p)  # checksum passed but the payload does not decode: treat as lost
            continue
        idx[:, sel] = vals.reshape(header.m, -1)
        missing[sel] = False
    if missing.all():  # no index arrived: any picture would be invented from nothing
        raise VqcFormatError(f"every packet of the index map was lost ({n} of {n}): nothing to decode")
    book = bundle.codebook(k)
    method, net, label = _recovery_choice(bundle, method, bool(missing.any()))
    q = bundle.model.quantize
    idx, soft = recovery.recover_soft(idx, missing, q.plane_codes(book), bundle.table(k).counts,
                                      method, q.plane_cosine, net, k)  # fmt: skip
    holes = None if soft is None else (missing, soft[torch.from_numpy(missing)].numpy())
    lost = tuple(sorted(set(scan.lost) | set(undecodable)))
    report = LossReport(n, lost, scan.damaged, scan.duplicates, int(missing.sum()), hh * ww, label, scan.parity,
                        scan.parity_arrived, scan.rebuilt, scan.parity_mismatch)  # fmt: skip
    enc = Encoded(idx, (header.width, header.height), (ww * bundle.stride, hh * bundle.stride), k, header.model_id,
                  holes)  # fmt: skip
    return enc, bundle, report


def _recovery_choice(bundle: Bundle, method: str, needed: bool):
    """Resolve ``auto`` (masked, else ar, else neighbour) and load the transformer it needs.

    The transformers model m = 1 index maps: for m > 1 (LooC, dual) every method but ``none``
    becomes ``neighbour``, and the report says why."""
    if bundle.m > 1 and method != "none":
        asked = (
            ""
            if method in ("auto", "neighbour")
            else f" ({method} needs m = 1 index maps, this model has m = {bundle.m})"
        )
        return "neighbour", None, "neighbour" + asked
    if method == "auto":
        method = next((kind for kind in ("masked", "ar") if bundle.has_transformer(kind)), "neighbour")
    kind = recovery.TRANSFORMER.get(method)
    if kind == "masked" and bundle.has_transformer("fill"):
        kind = "fill"  # the recovery-only model, trained on packet-loss holes alone
    if not (needed and kind):
        return method, None, method
    # an integer copy when shipped: the recovered index map is then the same on every computer; the
    # int8 one (0.3.0) where there is one, 3x faster than the int16 copy (docs/results.md, "Speed")
    if bundle.has_int8(kind):
        net = bundle.int8_transformer(kind).to(devices.current())
    elif bundle.has_exact(kind):
        net = bundle.exact_transformer(kind).to(devices.current())
    else:
        net = bundle.transformer(kind)
    return method, net, method


def unpack_any(data: bytes, model: Bundle | str | None = None, max_pixels: int = MAX_PIXELS,
               method: str = recovery.DEFAULT) -> tuple[Encoded, Bundle, LossReport]:  # fmt: skip
    """Any .vqc file -> (the index map a decode draws, bundle, report): single-stream, packetized
    (holes filled with ``method``) or layered (the deepest complete layer)."""
    if container.is_packetized(bytes(data[:4])):
        return unpack_packets(data, model, max_pixels, method)
    if layerpackets.is_layer_packets(bytes(data[:4])):
        from vqcodec import progressive

        return progressive.unpack_packets(data, model, max_pixels, method)
    if layerfile.is_layered(bytes(data[:4])):
        from vqcodec import progressive

        return progressive.unpack(data, model, max_pixels)
    enc, bundle = unpack(data, model, max_pixels)
    return enc, bundle, LossReport()


def decode_with_report(
    data: bytes,
    model: Bundle | str | None = None,
    max_pixels: int = MAX_PIXELS,
    method: str = recovery.DEFAULT,
    device: str | None = None,
) -> tuple[np.ndarray, LossReport]:
    """Decode any .vqc file; for packetized ones also say what was lost and recovered."""
    if method != "auto" and method not in recovery.METHODS:
        raise VqcUsageError(f"unknown recovery method {method!r}; choose one of auto, {', '.join(recovery.METHODS)}")
    with _maybe_using(device):
        enc, bundle, report = unpack_any(data, model, max_pixels, method)
        return synthesize(enc, bundle), report


def decode(
    data: bytes,
    model: Bundle | str | None = None,
    max_pixels: int = MAX_PIXELS,
    method: str = recovery.DEFAULT,
    device: str | None = None,
) -> np.ndarray:
    """Decompress .vqc bytes to an (H, W, 3) uint8 RGB image.

    The model is found from the file's model id unless ``model`` is given (it must match).
    Packetized files decode whatever was lost: missing indices are predicted with ``method``.
    ``device``: as in ``encode``.
    """
    return decode_with_report(data, model, max_pixels, method, device)[0]
