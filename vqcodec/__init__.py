"""vqcodec: extreme-low-bitrate image compression with VQGAN index maps.

>>> import numpy as np, vqcodec
>>> img = np.zeros((40, 56, 3), np.uint8)
>>> data = vqcodec.encode(img, codebook_size=64)      # .vqc bytes
>>> vqcodec.decode(data).shape
(40, 56, 3)
"""

from vqcodec.codec import Encoded, FileInfo, decode, encode, info
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
    "encode",
    "info",
    "load_image",
    "load_model",
    "save_image",
]
