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


class VqcBudgetError(VqcError):
    """No codebook size fits a ``max_bytes`` budget: the image needs more bytes than allowed.

    Exit 1, not 2: the request is well-formed, this image is just too costly for it (another
    image may fit the same budget). ``budget`` and ``smallest`` (the smallest file any K
    gives) let a caller retry with a budget that works."""

    def __init__(self, budget: int, smallest: int, what: str = "") -> None:
        super().__init__(
            what or f"no codebook size fits in {budget} bytes: the smallest file this image gives is {smallest} bytes"
        )
        self.budget = budget
        self.smallest = smallest
        self.what = what

    def __reduce__(self):  # pickles (process pools) with its numbers, not the message
        return type(self), (self.budget, self.smallest, self.what)
