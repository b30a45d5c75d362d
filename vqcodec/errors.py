"""One exception hierarchy: the CLI turns every ``VqcError`` into a one-line message.

Exit codes: ``VqcUsageError`` -> 2 (the user asked for something impossible), every other
``VqcError`` -> 1 (the data was bad: corrupt file, unreadable image, wrong model...).
"""


class VqcError(Exception):
    """Base class of every error vqcodec raises on purpose."""

    exit_code = 1


class VqcFormatError(VqcError):
    """A .vqc byte string is not a valid file (truncated, corrupted, unknown version...)."""


class VqcModelError(VqcError):
    """A model bundle is missing, damaged (sha256 mismatch) or not the one a file needs."""


class VqcImageError(VqcError):
    """An input image cannot be read, or is too large."""


class VqcUsageError(VqcError):
    """Invalid options (an unavailable codebook size, a bad flag value...)."""

    exit_code = 2
