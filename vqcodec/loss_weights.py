"""The perceptual loss the encoder's effort search measures pictures with: LPIPS-VGG (all five taps).

Why all five: on held-out photos the search guided by LPIPS-VGG cut after relu3_3 (the cheaper
training loss) improved LPIPS-Alex by 0.004 and made DISTS worse; with the five taps it improved
both (0.026 and 0.017 at K=64, benchmarks/effort.py). The VGG16 weights (59 MB in float32) are not
shipped in the package; they are found, in this order:

1. ``$VQC_WEIGHTS`` or the repository's ``../shared/weights`` (``perceptual.weights_dir``), with
   LPIPS's linear layers from the ``lpips`` wheel (or its packed copy): offline, for the tests;
2. torchvision's ImageNet VGG16 (``pip install 'vqcodec[effort]'``), which torchvision downloads
   once into its cache.
"""

from __future__ import annotations

from functools import cache

from vqcodec.errors import VqcUsageError

INSTALL = ("--effort above 1 needs the LPIPS-VGG loss network: pip install 'vqcodec[effort]' (lpips and "
           "torchvision; VGG16's weights download once), or set VQC_WEIGHTS to a folder holding "
           "vgg16_features_torchvision_IMAGENET1K_V1.pth")  # fmt: skip


@cache
def lpips_vgg():
    """LPIPS-VGG v0.1 (``perceptual.LPIPS``), frozen, float32, loaded once per process."""
    from vqcodec.perceptual import _WEIGHT_FILES, LPIPS, _package_data, weights_dir

    try:
        _package_data("lpips", "weights", "v0.1", "vgg.pth")
    except FileNotFoundError:
        raise VqcUsageError(INSTALL) from None
    if (weights_dir() / _WEIGHT_FILES["vgg"]).is_file():
        try:
            return LPIPS("vgg", 5)
        except ValueError:  # a packed copy (vqc pack-data) stops at relu3_3: not enough
            pass
    try:
        import torchvision
    except ImportError:
        raise VqcUsageError(INSTALL) from None
    try:
        vgg = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    except Exception as e:  # noqa: BLE001 - no network, a broken cache: one line, not a traceback
        raise VqcUsageError(f"{INSTALL} ({str(e).splitlines()[0]})") from None
    tensors = {f"features.{k}": v for k, v in vgg.features.state_dict().items()}
    return LPIPS("vgg", 5, tensors=tensors)
