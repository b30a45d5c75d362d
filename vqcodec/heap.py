"""Big activations kept on glibc's heap while PyTorch runs a network forward and back in eager mode.

Why: glibc serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap``,
zeroed page by page on first touch, and hands it back with ``munmap`` when freed. The effort
search (``vqcodec.effort``) runs the decoder and LPIPS-VGG forward and back at full resolution,
where one activation is 50-100 MB: each of its hundreds of elementwise operations then paid for
new pages. Turning ``mmap`` off for the duration (``M_MMAP_MAX`` 0) and not trimming the heap
(``M_TRIM_THRESHOLD``) lets freed activations be reused: a search step on a 768x512 photo went
from 3.4-3.8 s to 2.9-3.0 s on an AMD EPYC, 2 threads (docs/history.md, "The effort search on a
CPU without AMX"). Afterwards the settings go back to glibc's defaults (or the ``MALLOC_*``
environment variables the process started with) and the free heap is returned to the system
(``malloc_trim``), so the process's footprint after an encode is what it was. One thing does not
come back: glibc's adaptive mmap threshold, which any ``mallopt`` turns off for the rest of the
process (blocks above 128 KB are then mapped, as glibc's documented default says).

Other C libraries (macOS, Windows, musl) are left alone: ``kept`` does nothing there.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULTS = {M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 128 * 1024), M_MMAP_MAX: ("MALLOC_MMAP_MAX_", 65536)}
"""glibc's own defaults, unless the process was started with the environment variable."""
KEEP = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def _default(param: int) -> int:
    env, value = DEFAULTS[param]
    try:
        return int(os.environ.get(env, value))
    except ValueError:
        return value


_LOCK = threading.Lock()
_USERS = 0
"""Searches inside ``kept`` now (threads of one process): the settings go back when the last leaves."""


@contextmanager
def kept() -> Iterator[None]:
    """Within the block, freed big blocks stay on the heap for the next activation."""
    global _USERS
    libc = _glibc()
    if libc is None:
        yield
        return
    with _LOCK:
        if _USERS == 0:
            for param, value in KEEP.items():
                libc.mallopt(param, value)
        _USERS += 1
    try:
        yield
    finally:
        with _LOCK:
            _USERS -= 1
            if _USERS == 0:
                for param in KEEP:
                    libc.mallopt(param, _default(param))
                libc.malloc_trim(0)
