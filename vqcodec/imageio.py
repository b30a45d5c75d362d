"""Image files in and out: Pillow decoding with the guards a codec needs, atomic writes.

Every input becomes 8-bit RGB: EXIF orientation is applied, and grayscale, palette, RGBA
(composited on white), CMYK and 16-bit images are converted; the conversion is reported so the
CLI can tell the user. The pixel count is checked *before* the pixels are decoded.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vqcodec.errors import VqcImageError

MAX_PIXELS = 4096 * 4096
"""Default upper bound on width x height (memory of the f=16 encoder grows with it)."""


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) uint8
    source_mode: str  # Pillow mode of the file, e.g. "RGB", "L", "RGBA", "I;16"
    converted: bool  # True when the file was not plain 8-bit RGB


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    if width < 1 or height < 1:
        raise VqcImageError(f"image has an empty dimension ({width}x{height})")
    if width * height > max_pixels:
        raise VqcImageError(f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")


def load_image(path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read any Pillow-readable image (a path or a binary file object) as 8-bit RGB, EXIF-oriented."""
    if not hasattr(path, "read"):
        path = Path(path)
    label = path if isinstance(path, Path) else "<stdin>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_size(im.width, im.height, max_pixels)
                mode = im.mode
                im = ImageOps.exif_transpose(im)
                check_size(im.width, im.height, max_pixels)
                rgb = _to_rgb(im)
                return LoadedImage(np.asarray(rgb, dtype=np.uint8).copy(), mode, mode != "RGB")
    except VqcImageError:
        raise
    except FileNotFoundError:
        raise VqcImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise VqcImageError(f"{label}: is a directory") from None
    except PermissionError:
        raise VqcImageError(f"{label}: permission denied") from None
    except UnidentifiedImageError:
        raise VqcImageError(f"{label}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VqcImageError(f"{label}: too many pixels ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise VqcImageError(f"{label}: cannot decode image ({e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it: never a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(pixels: np.ndarray, path: str | os.PathLike) -> None:
    """Save (H, W, 3) uint8 atomically; the format follows the suffix (PNG when unknown)."""
    path = Path(path)
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext, "PNG")
    img = Image.fromarray(pixels, "RGB")
    if not path.parent.exists():
        raise VqcImageError(f"{path}: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        img.save(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    except (OSError, ValueError, KeyError) as e:
        Path(tmp).unlink(missing_ok=True)
        raise VqcImageError(f"{path}: cannot write {fmt} ({e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pad_to_multiple(pixels: np.ndarray, stride: int) -> np.ndarray:
    """Reflect-pad (H, W, 3) at the bottom/right to multiples of ``stride``.

    numpy's 'reflect' keeps reflecting when the pad exceeds the image (tiny images); a 1-pixel
    dimension cannot be reflected and is repeated instead.
    """
    h, w = pixels.shape[:2]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return pixels
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(pixels, ((0, ph), (0, pw), (0, 0)), mode=mode)
