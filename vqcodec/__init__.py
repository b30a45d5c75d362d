"""vqcodec: extreme-low-bitrate image compression with VQGAN index maps.

>>> import numpy as np, vqcodec
>>> data = vqcodec.encode(np.zeros((40, 56, 3), np.uint8), codebook=64)   # .vqc bytes
>>> vqcodec.decode(data).size                                             # a PIL image
(56, 40)
>>> vqcodec.info(data).header.codebook_size
64
>>> sent = vqcodec.encode(np.zeros((64, 96, 3), np.uint8), 16, packets=8, parity=2)
>>> out = vqcodec.decode_report(vqcodec.corrupt(sent, loss=0.3, seed=1))   # a lossy link
>>> out.image.size, out.report.packets
((96, 64), 8)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vqcodec.errors import VqcBudgetError, VqcError, VqcFormatError, VqcImageError, VqcModelError, VqcUsageError

if TYPE_CHECKING:
    from vqcodec.api import Decoded, corrupt, decode, decode_array, decode_report, encode
    from vqcodec.codec import Encoded, LossReport
    from vqcodec.fileinfo import FileInfo, info
    from vqcodec.imageio import load_image, save_image
    from vqcodec.layerfile import trim
    from vqcodec.zoo import Bundle, available, load_model

__version__ = "0.2.0"
"""The package version; pyproject.toml reads it from here (setuptools ``dynamic``), so it is written once."""

_LAZY = {
    "corrupt": "vqcodec.api",
    "decode": "vqcodec.api",
    "decode_array": "vqcodec.api",
    "decode_report": "vqcodec.api",
    "Decoded": "vqcodec.api",
    "encode": "vqcodec.api",
    "Encoded": "vqcodec.codec",
    "LossReport": "vqcodec.codec",
    "FileInfo": "vqcodec.fileinfo",
    "info": "vqcodec.fileinfo",
    "load_image": "vqcodec.imageio",
    "save_image": "vqcodec.imageio",
    "Bundle": "vqcodec.zoo",
    "available": "vqcodec.zoo",
    "load_model": "vqcodec.zoo",
    "trim": "vqcodec.layerfile",
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
    "Decoded",
    "Encoded",
    "FileInfo",
    "LossReport",
    "VqcBudgetError",
    "VqcError",
    "VqcFormatError",
    "VqcImageError",
    "VqcModelError",
    "VqcUsageError",
    "available",
    "corrupt",
    "decode",
    "decode_array",
    "decode_report",
    "encode",
    "info",
    "load_image",
    "load_model",
    "save_image",
    "trim",
]
