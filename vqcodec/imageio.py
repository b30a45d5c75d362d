"""Image files in and out: Pillow decoding with the guards a codec needs, atomic writes.

Every input becomes 8-bit RGB: EXIF orientation is applied, and grayscale, palette, RGBA
(composited on white), CMYK and 16-bit images are converted; the conversion is reported so the
CLI can tell the user. The pixel count is checked *before* the pixels are decoded.
"""

from __future__ import annotations

import errno
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vqcodec.errors import VqcImageError

MAX_PIXELS = 1 << 27
"""Default upper bound on width x height (134 MP): a guard against decompression bombs. Models of
the taef2 backbone (the default) run big images tile by tile in bounded memory (about 2 GB at
50 MP: docs/usage.md), so the limit is no longer what memory allows but what a photo plausibly is."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})
"""The files a folder or glob input of ``vqc encode`` / ``vqc bulk encode`` picks up."""
WHOLE_MAX_PIXELS = 4096 * 4096
"""The limit for models that run whole images only (the vqgan backbone: vqc-small)."""


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


def load_image(
    path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_PIXELS, label: str | None = None
) -> LoadedImage:
    """Read any Pillow-readable image (a path or a binary file object) as 8-bit RGB, EXIF-oriented.
    ``label`` names a file object in error messages (default ``<stdin>``)."""
    if not hasattr(path, "read"):
        path = Path(path)
    label = path if isinstance(path, Path) else label or "<stdin>"
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


_CHUNK = 1 << 20


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:_CHUNK]) :]


_TMPFILE_WORKS: bool | None = None  # learnt on first use: some kernels/sandboxes refuse the link
_PART = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.part$")


def _sweep_stale_parts(folder: Path) -> None:
    """Remove hidden temp files of our own writers that were killed (their pid is gone)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for f in entries:
        m = _PART.match(f.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except OSError:
            pass


def _write_unnamed(folder: Path, tmp: Path, data: bytes) -> bool:
    """Write into an O_TMPFILE and link it as ``tmp``; False where the system cannot."""
    global _TMPFILE_WORKS
    if _TMPFILE_WORKS is False or not hasattr(os, "O_TMPFILE"):
        return False
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    except OSError:
        _TMPFILE_WORKS = False
        return False
    try:
        _write_all(fd, data)
        try:
            os.link(f"/proc/self/fd/{fd}", tmp, follow_symlinks=True)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            _TMPFILE_WORKS = False
            return False
    finally:
        os.close(fd)
    _TMPFILE_WORKS = True
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sweep: bool = True) -> None:
    """Write ``data`` to ``path`` all at once or not at all, whatever happens meanwhile.

    Where Linux allows it, the bytes go to an unnamed ``O_TMPFILE`` in the target directory that
    is linked under a hidden name and renamed over ``path`` only once complete, so even a SIGKILL
    mid-write leaves nothing behind. Elsewhere (other systems, sandboxes that refuse the link) a
    hidden ``.NAME.PID.RANDOM.part`` file is used: removed on any error or signal Python sees,
    and, if a SIGKILL left one, swept by the next write into that folder. ``path`` itself only
    ever appears complete. A full disk or unwritable directory is a one-line ``VqcImageError``;
    an existing ``path`` is replaced, only once the new one is complete. ``sweep=False`` skips the
    sweep: a writer of many files into one folder (``vqc bulk``) sweeps it once, not once per file
    (a listing per write would make a 100k-file folder quadratic).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise VqcImageError(f"{path}: directory {folder} does not exist")
    if sweep:
        _sweep_stale_parts(folder)
    tmp = folder / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.part"
    try:
        if not _write_unnamed(folder, tmp, data):
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VqcImageError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


PNG_LEVEL = 3
"""zlib level of written PNGs: 2.4x faster than Pillow's default 6 on a decoded 768x512 photo (44
against 107 ms, a sixth of a decode) for a 3 % bigger file (level 1: 33 ms, +4.6 %)."""


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    """(H, W, 3) uint8 -> the bytes of an image file in ``fmt`` (a Pillow format name)."""
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {"compress_level": PNG_LEVEL} if fmt == "PNG" else {}
    try:
        Image.fromarray(pixels, "RGB").save(buf, format=fmt, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise VqcImageError(f"cannot encode {fmt} ({e})") from None
    return buf.getvalue()


def save_image(pixels: np.ndarray, path: str | os.PathLike) -> None:
    """Save (H, W, 3) uint8 atomically; the format follows the suffix (PNG when unknown)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    try:
        data = encode_image(pixels, fmt)
    except VqcImageError as e:
        raise VqcImageError(f"{path}: {e}") from None
    atomic_write_bytes(path, data)


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
