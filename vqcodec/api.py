"""The public Python API: PIL images or uint8 arrays in, .vqc bytes out, PIL images back.

>>> import numpy as np, vqcodec
>>> data = vqcodec.encode(np.zeros((40, 56, 3), np.uint8), codebook=64)
>>> data[:3]
b'VQC'
>>> vqcodec.decode(data).size
(56, 40)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from vqcodec import codec
from vqcodec.container import CodingMode
from vqcodec.errors import VqcUsageError
from vqcodec.imageio import MAX_PIXELS, _to_rgb, load_image
from vqcodec.zoo import Bundle

ImageLike = Image.Image | np.ndarray | str | os.PathLike
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
    model: Bundle | str | os.PathLike | None = None,
    *,
    entropy: str = "auto",
    max_pixels: int = MAX_PIXELS,
    max_bytes: int | None = None,
    device: str = "auto",
) -> bytes:
    """Compress an image to the bytes of a .vqc file.

    Args:
        image: a PIL image, an (H, W, 3) / (H, W) uint8 array, or a path to an image file.
        codebook: codebook size K, the rate knob (8 ... 1024 for the default model); default 64.
        model: a loaded ``Bundle``, a bundle name or folder; default: the shipped default.
        entropy: "auto" (the integer-exact context model when the bundle has one, else static),
            "exact", "static", "context" (the float context model of older files: may not decode
            on another CPU) or "raw" (fixed-width indices, the paper's uncoded baseline).
        device: where the networks run: "auto" (CUDA when present), "cpu" or "cuda".
        max_pixels: refuse images with more pixels than this.
        max_bytes: instead of ``codebook``, the best quality that fits: the largest K whose
            whole file is at most this many bytes (``vqcodec.info(data).header.codebook_size``
            says which). Raises ``VqcBudgetError`` when even the smallest K is too big, and
            ``VqcUsageError`` when ``codebook`` is given too.
    """
    mode = coding_mode(entropy)
    if max_bytes is not None:
        if codebook is not None:
            raise VqcUsageError("give either codebook or max_bytes, not both: max_bytes chooses the codebook size")
        return codec.encode_within(as_pixels(image, max_pixels), max_bytes, _model(model), mode, max_pixels,
                                   device=device)  # fmt: skip
    k = DEFAULT_CODEBOOK if codebook is None else codebook
    return codec.encode(as_pixels(image, max_pixels), k, _model(model), mode, max_pixels, device)


def coding_mode(entropy: str) -> CodingMode | None:
    """ "auto" -> None (the codec picks the best available), else the named mode."""
    modes = {"static": CodingMode.STATIC, "exact": CodingMode.EXACT, "context": CodingMode.CONTEXT,
             "raw": CodingMode.RAW}  # fmt: skip
    if entropy == "auto":
        return None
    if entropy not in modes:
        raise VqcUsageError(f"unknown entropy coder {entropy!r}; choose auto, static, exact, context or raw")
    return modes[entropy]


def decode(
    data: bytes, model: Bundle | str | os.PathLike | None = None, *, max_pixels: int = MAX_PIXELS,
    device: str = "auto",
) -> Image.Image:  # fmt: skip
    """Decompress .vqc bytes to an RGB PIL image (the model is found from the file's id);
    ``device`` as in ``encode``."""
    return Image.fromarray(codec.decode(bytes(data), _model(model), max_pixels, device=device), "RGB")


def decode_array(
    data: bytes, model: Bundle | str | os.PathLike | None = None, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Like ``decode`` but returns an (H, W, 3) uint8 array."""
    return codec.decode(bytes(data), _model(model), max_pixels)


def _model(model):
    if model is None or isinstance(model, Bundle):
        return model
    return str(model)
