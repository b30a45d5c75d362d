"""Pillow plugin: ``Image.open("x.vqc")`` decodes, ``img.save("x.vqc", codebook=64)`` encodes.

Importing this module registers the plugin (like Pillow's own plugins); ``register_vqc_opener()``
does the same explicitly and is idempotent (Pillow 13 has no plugin entry point, so an import is
needed). Opening reads only the header (size and mode are known without decoding); the
pixels are decoded by ``load()``. Save options: ``codebook`` (K, default 64), ``model``, ``entropy``.
"""

from __future__ import annotations

from typing import IO

import numpy as np
from PIL import Image, ImageFile

from vqcodec import container
from vqcodec.errors import VqcFormatError
from vqcodec.imageio import MAX_PIXELS

FORMAT = "VQC"
MAX_FILE_BYTES = 1 << 30


def _accept(prefix: bytes) -> bool:
    return prefix[:3] == container.MAGIC


class VqcImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "vqcodec extreme-low-bitrate image"

    def _open(self) -> None:
        data = self.fp.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise SyntaxError("file too large for a .vqc image")
        try:
            header = container.read_header(data)
        except VqcFormatError as e:
            raise SyntaxError(str(e)) from None
        self._data = data
        self._size = (header.width, header.height)
        self._mode = "RGB"
        self.info["codebook"] = header.codebook_size
        self.info["model_id"] = f"{header.model_id:08x}"
        self.tile = []

    def load(self):
        if getattr(self, "_data", None) is not None:
            from vqcodec import codec

            pixels = codec.decode(self._data, None, max(MAX_PIXELS, self.size[0] * self.size[1]))
            self.load_prepare()
            self.frombytes(np.ascontiguousarray(pixels).tobytes())
            self._data = None
        return super().load()


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from vqcodec import api

    opts = im.encoderinfo
    fp.write(api.encode(im, opts.get("codebook", 64), opts.get("model"), entropy=opts.get("entropy", "auto")))


def register_vqc_opener() -> None:
    """Register open/save/extension with Pillow (safe to call more than once)."""
    Image.register_open(FORMAT, VqcImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".vqc")
    Image.register_mime(FORMAT, "image/x-vqc")


register_vqc_opener()
