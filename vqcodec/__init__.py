"""vqcodec: extreme-low-bitrate image compression with VQGAN index maps.

>>> import numpy as np, vqcodec
>>> data = vqcodec.encode(np.zeros((40, 56, 3), np.uint8), codebook=64)   # .vqc bytes
>>> vqcodec.decode(data).size                                             # a PIL image
(56, 40)
>>> vqcodec.info(data).header.codebook_size
64
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vqcodec.errors import VqcBudgetError, VqcError, VqcFormatError, VqcImageError, VqcModelError, VqcUsageError

if TYPE_CHECKING:
    from vqcodec.api import decode, decode_array, encode
    from vqcodec.codec import Encoded
    from vqcodec.fileinfo import FileInfo, info
    from vqcodec.imageio import load_image, save_image
    from vqcodec.zoo import Bundle, available, load_model

__version__ = "0.2.0"
"""The package version; pyproject.toml reads it from here (setuptools ``dynamic``), so it is written once."""

_LAZY = {
    "decode": "vqcodec.api",
    "decode_array": "vqcodec.api",
    "encode": "vqcodec.api",
    "Encoded": "vqcodec.codec",
    "FileInfo": "vqcodec.fileinfo",
    "info": "vqcodec.fileinfo",
    "load_image": "vqcodec.imageio",
    "save_image": "vqcodec.imageio",
    "Bundle": "vqcodec.zoo",
    "available": "vqcodec.zoo",
    "load_model": "vqcodec.zoo",
}
"""Public name -> module, imported on first use (PEP 562): ``import vqcodec`` (and so every
``vqc`` command) does not pay for torch until something needs a network."""


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Bundle",
    "Encoded",
    "FileInfo",
    "VqcBudgetError",
    "VqcError",
    "VqcFormatError",
    "VqcImageError",
    "VqcModelError",
    "VqcUsageError",
    "available",
    "decode",
    "decode_array",
    "encode",
    "info",
    "load_image",
    "load_model",
    "save_image",
]
