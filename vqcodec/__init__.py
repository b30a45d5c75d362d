"""vqcodec: extreme-low-bitrate image compression with VQGAN index maps.

>>> import numpy as np, vqcodec
>>> data = vqcodec.encode(np.zeros((40, 56, 3), np.uint8), codebook=64)   # .vqc bytes
>>> vqcodec.decode(data).size                                             # a PIL image
(56, 40)
>>> vqcodec.info(data).header.codebook_size
64
"""

from vqcodec.api import decode, decode_array, encode
from vqcodec.codec import Encoded, FileInfo, info
from vqcodec.errors import VqcError, VqcFormatError, VqcImageError, VqcModelError, VqcUsageError
from vqcodec.imageio import load_image, save_image
from vqcodec.zoo import Bundle, available, load_model

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "Encoded",
    "FileInfo",
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
