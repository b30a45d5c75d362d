"""The public Python API: what ``vqc`` does, as functions. PIL images or uint8 arrays in,
.vqc bytes out, PIL images back; packets, parity, the lossy-channel simulation and decode's
loss report included. The CLI calls these same functions (or their shared parts in
``vqcodec.options``), so both give the same bytes and the same one-line errors.

>>> import numpy as np, vqcodec
>>> data = vqcodec.encode(np.zeros((40, 56, 3), np.uint8), codebook=64)
>>> data[:3]
b'VQC'
>>> vqcodec.decode(data).size
(56, 40)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vqcodec import channel, codec, options
from vqcodec import device as devices
from vqcodec.codec import LossReport
from vqcodec.container import CodingMode
from vqcodec.errors import VqcUsageError
from vqcodec.imageio import MAX_PIXELS, _to_rgb, check_size, load_image
from vqcodec.zoo import Bundle, load_model

ImageLike = Image.Image | np.ndarray | str | os.PathLike
ModelLike = Bundle | str | os.PathLike | None
DEFAULT_CODEBOOK = 64


def as_pixels(image: ImageLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any supported image input -> (H, W, 3) uint8 RGB.

    A path is read with ``load_image`` (EXIF orientation applied); a PIL image in any mode is
    converted to RGB like a file would be; an array must be (H, W, 3) or (H, W) uint8.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image), max_pixels).pixels
    if isinstance(image, Image.Image):
        return np.array(_to_rgb(image), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise VqcUsageError(f"arrays must be uint8, got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise VqcUsageError(f"arrays must be (H, W, 3) or (H, W), got {image.shape}")
        return image
    raise VqcUsageError(f"cannot encode an object of type {type(image).__name__}")


def encode(
    image: ImageLike,
    codebook: int | None = None,
    model: ModelLike = None,
    *,
    entropy: str = "auto",
    packets: int | str | None = None,
    parity: int | str | Sequence[int] = 0,
    max_bytes: int | None = None,
    max_pixels: int = MAX_PIXELS,
    device: str = "auto",
    effort: int = 1,
    layers: str | Sequence[int] | None = None,
) -> bytes:
    """Compress an image to the bytes of a .vqc file: the bytes ``vqc encode`` writes with the
    same options.

    Args:
        image: a PIL image, an (H, W, 3) / (H, W) uint8 array, or a path to an image file.
        codebook: codebook size K, the rate knob (8 ... 1024 for the default model); default 64.
        model: a loaded ``Bundle``, a bundle name or folder; default: the shipped default.
        entropy: "auto" (the integer-exact context model when the bundle has one, else static;
            static for packetized files), "int8-paired" (auto's choice where the int8 model is
            shipped), "int8" (the same model in 7 passes: files 0.2.0 reads), "exact" (int16),
            "static", "context" (the float context model of older files: may not decode on
            another CPU) or "raw" (fixed-width indices, the paper's uncoded baseline).
        packets: packetize for a lossy channel (as ``vqc encode --packets``): a count (16) or a
            target packet size ("200B"). Each packet decodes on its own; lost ones are predicted.
        parity: with ``packets``, R erasure-coded parity packets (0..63): any N of the N + R
            packets rebuild the file exactly (``--parity``).
        max_bytes: instead of ``codebook``, the best quality that fits: the largest K whose
            whole file (packets included) is at most this many bytes (``vqcodec.info(data)
            .header.codebook_size`` says which). Raises ``VqcBudgetError`` when even the
            smallest K is too big, and ``VqcUsageError`` when ``codebook`` is given too.
        max_pixels: refuse images with more pixels than this.
        device: where the networks run: "auto" (CUDA when present), "cpu" or "cuda[:N]".
        effort: 1 (each position's nearest code: fast, the default) to 5: levels above 1
            search the index map against the decoder (``vqcodec.effort``) for a better picture
            in at most the bytes effort 1 writes (or ``max_bytes``); files of any effort decode
            with every decoder. Needs the LPIPS-VGG loss network (``vqcodec[effort]``).
        layers: instead of ``codebook``, a layered (progressive) file: "8,64,1024" or [8, 64, 1024],
            a chain the model ships nested books for (or its first layers). The first bytes are a
            K=8 picture, each later layer refines it; any prefix of whole layers decodes, and a
            file cut anywhere decodes to its last complete layer (``trim`` cuts one to a budget).
            With ``max_bytes``: the file stops after the last layer that fits. With ``packets``
            (a count): each layer in that many packets, and ``parity`` one count per layer
            ("4,2,0": the base layer protected most) or one for all. Not with ``effort`` above 1.

    Raises ``VqcUsageError`` (one line, as the CLI prints it) for bad options: parity without
    packets, a packet count out of 1..255, an unknown entropy coder, an unavailable K...

    >>> import numpy as np, vqcodec
    >>> data = vqcodec.encode(np.zeros((64, 96, 3), np.uint8), 16, packets=8, parity=2)
    >>> vqcodec.info(data).packets.parity
    2
    """
    mode = options.coding_mode(entropy)
    effort = options.check_effort(effort)
    if layers is not None:
        return _encode_layers(image, options.check_layers(layers), model, mode, codebook, packets, parity, effort,
                              max_bytes, max_pixels, device)  # fmt: skip
    n_packets, packet_bytes = options.packet_layout(packets, parity)
    if max_bytes is not None:
        if codebook is not None:
            raise VqcUsageError("give either codebook or max_bytes, not both: max_bytes chooses the codebook size")
        max_bytes = codec.check_budget(max_bytes)
    pixels = as_pixels(image, max_pixels)
    check_size(pixels.shape[1], pixels.shape[0], max_pixels)
    bundle = _bundle(model)
    k = DEFAULT_CODEBOOK if codebook is None else codebook
    if max_bytes is None:
        bundle.codebook(k)  # an unavailable K: the usage error, before any network runs
    with devices.using(device):
        options_ = codec.PackOptions(mode, n_packets, packet_bytes, parity)
        data, _ = codec.compress(pixels, bundle, k, max_bytes, options_, effort=effort)
    return data


def _encode_layers(image: ImageLike, sizes: tuple[int, ...], model: ModelLike, mode, codebook: int | None,
                   packets, parity, effort: int, max_bytes: int | None, max_pixels: int, device: str) -> bytes:  # fmt: skip
    """``encode(..., layers=...)``: the option clashes first, then the layered file."""
    from vqcodec import layerpackets, progressive

    if codebook is not None:
        raise VqcUsageError("give either codebook or layers, not both: layers names every codebook size of the file")
    n_packets, packet_bytes = options.parse_packets(packets)
    if packet_bytes:
        raise VqcUsageError("a layered file takes a packet count per layer (--packets 16), not a packet size")
    parity = options.layer_parity(parity, len(sizes))
    if any(parity) and not n_packets:
        raise VqcUsageError("--parity adds parity packets to a packetized file: give --packets N too")
    if n_packets:
        layerpackets.check(sizes, n_packets, parity)
    if effort != 1:
        raise VqcUsageError("effort above 1 searches single-layer index maps: use effort 1 with layers")
    if max_bytes is not None:
        max_bytes = codec.check_budget(max_bytes)
    pixels = as_pixels(image, max_pixels)
    check_size(pixels.shape[1], pixels.shape[0], max_pixels)
    bundle = _bundle(model)
    progressive.check(bundle, sizes, CodingMode.STATIC if n_packets else mode)  # before any network runs
    with devices.using(device):
        return progressive.compress(pixels, bundle, sizes, mode, max_bytes, n_packets, parity)[0]


def corrupt(
    data: bytes,
    *,
    loss: float = 0.0,
    burst: float = 1.0,
    ber: float = 0.0,
    shuffle: bool = False,
    duplicate: float = 0.0,
    seed: int = 0,
) -> bytes:
    """Send a packetized .vqc file through a simulated lossy channel (as ``vqc corrupt``): the
    damaged bytes a receiver would get. Seeded, so the same arguments give the same bytes.

    Args:
        data: a packetized file (``encode(..., packets=N)``); others raise ``VqcUsageError``.
        loss: packet loss rate in [0, 1].
        burst: mean burst length in packets (Gilbert-Elliott); 1 = independent losses.
        ber: bit error rate over the whole file; a hit packet fails its checksum and counts as lost.
        shuffle: reorder the surviving packets.
        duplicate: probability to repeat a packet.
        seed: the random seed.

    >>> import numpy as np, vqcodec
    >>> sent = vqcodec.encode(np.zeros((64, 96, 3), np.uint8), 16, packets=8)
    >>> lossy = vqcodec.corrupt(sent, loss=0.3, seed=7)
    >>> vqcodec.decode_report(lossy).report.packets
    8
    """
    return channel.corrupt(bytes(data), loss, burst, ber, shuffle, duplicate, seed)[0]


@dataclass(frozen=True)
class Decoded:
    """What ``decode_report`` returns: the picture and what its decode found missing.

    Attributes:
        image: the decoded picture, an RGB PIL image of the encoded size.
        report: the loss report ``vqc decode`` prints (``codec.LossReport``): for a packetized
            file the packets declared (``packets``), received (``received``), still lost
            (``lost_packets``) and rebuilt from parity (``rebuilt``), the indices predicted
            (``missing_positions`` of ``positions``) and the recovery ``method`` used;
            ``report.summary()`` is the line ``vqc decode`` prints. All zero for a file that
            is not packetized (``report.packets == 0``).
    """

    image: Image.Image
    report: LossReport


def decode_report(
    data: bytes,
    model: ModelLike = None,
    *,
    recover: str = "auto",
    max_pixels: int = MAX_PIXELS,
    device: str = "auto",
) -> Decoded:
    """Decompress .vqc bytes, and say what was lost on the way and how it was filled.

    Args:
        data: the bytes of a .vqc file, packetized or not, intact or damaged.
        model: a loaded ``Bundle``, a bundle name or folder; default: the installed bundle
            whose model id the file names (a given model must match it).
        recover: how lost indices are predicted (as ``vqc decode --recover``): "auto" (the best
            the bundle ships), "none", "neighbour", "ar", "masked" or "masked-index".
        max_pixels: refuse files that declare more pixels than this.
        device: where the networks run: "auto" (CUDA when present), "cpu" or "cuda[:N]".

    Raises ``VqcFormatError`` when nothing decodable is left (a damaged header, every packet
    lost), ``VqcUsageError`` for an unknown ``recover``.

    >>> import numpy as np, vqcodec
    >>> out = vqcodec.decode_report(vqcodec.encode(np.zeros((64, 96, 3), np.uint8), 16, packets=8))
    >>> out.image.size, out.report.summary()
    ((96, 64), '8/8 packets received, 0 lost')
    """
    pixels, report = codec.decode_with_report(bytes(data), _model(model), max_pixels, recover, device)
    return Decoded(Image.fromarray(pixels, "RGB"), report)


def decode(
    data: bytes,
    model: ModelLike = None,
    *,
    recover: str = "auto",
    max_pixels: int = MAX_PIXELS,
    device: str = "auto",
) -> Image.Image:
    """Decompress .vqc bytes to an RGB PIL image; arguments as in ``decode_report``, which also
    says what a packetized file lost.

    >>> import numpy as np, vqcodec
    >>> vqcodec.decode(vqcodec.encode(np.zeros((40, 56, 3), np.uint8), 16)).size
    (56, 40)
    """
    return decode_report(data, model, recover=recover, max_pixels=max_pixels, device=device).image


def decode_array(data: bytes, model: ModelLike = None, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Like ``decode`` but returns an (H, W, 3) uint8 array."""
    return codec.decode(bytes(data), _model(model), max_pixels)


def _bundle(model: ModelLike) -> Bundle:
    return model if isinstance(model, Bundle) else load_model(_model(model))


def _model(model):
    if model is None or isinstance(model, Bundle):
        return model
    return str(model)
