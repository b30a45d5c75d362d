"""``vqcodec.heap``: big blocks come from the heap inside ``kept`` and go back to the system after it."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from vqcodec import heap

BIG = 96 * 2**20  # above glibc's largest mmap threshold (32 MB): always a fresh mmap by default


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def _info() -> _Mallinfo2:
    libc = heap._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc 2.33+ only")
    libc.mallinfo2.restype = _Mallinfo2
    return libc.mallinfo2()


def _resident() -> int:
    """Bytes of this process in memory (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _touch(n: int) -> np.ndarray:
    a = np.empty(n, np.uint8)
    a[::4096] = 1
    return a


def test_big_blocks_are_mapped_by_default():
    before = _info()
    a = _touch(BIG)
    assert _info().hblkhd - before.hblkhd >= BIG
    del a


def test_kept_takes_big_blocks_from_the_heap_and_trims_it_after():
    before, resident = _info(), _resident()
    with heap.kept():
        a = _touch(BIG)
        during = _info()
        assert during.hblkhd - before.hblkhd < BIG  # not mapped on its own
        assert during.uordblks - before.uordblks >= BIG  # the heap holds it instead
        del a
        b = _touch(BIG)  # the freed block is reused: the heap does not grow again
        assert _info().arena - during.arena < BIG
        del b
    assert _resident() - resident < BIG // 2  # given back (malloc_trim)
    c = _touch(BIG)  # and the defaults are back: mapped again
    assert _info().hblkhd - before.hblkhd >= BIG
    del c


def test_kept_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.kept():
        assert _touch(1024).size == 1024


def test_nested_kept_restores_only_when_the_last_leaves():
    before = _info()
    with heap.kept():
        with heap.kept():
            pass
        a = _touch(BIG)  # the outer block still keeps big blocks on the heap
        assert _info().hblkhd - before.hblkhd < BIG
        del a
    b = _touch(BIG)
    assert _info().hblkhd - before.hblkhd >= BIG
    del b
