"""Process-wide memory settings for processes that allocate and free large arrays in a loop (decode tasks)."""

from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 64 * 2**20  # blocks of crops (MBs each) come from the heap, not fresh mappings
TRIM_THRESHOLD_BYTES = 256 * 2**20  # freed heap kept for the next block, up to this much

_kept = False


def keep_freed_heap() -> bool:
    """Make glibc's malloc reuse freed large arrays instead of mapping fresh pages for each (True if set).

    By default glibc serves an allocation above its mmap threshold (128 KiB, raised as such blocks are
    freed, to at most 32 MiB) with a new mapping, unmapped when freed, and trims the heap once its free top
    exceeds twice that threshold; a decode task whose output arrays outlive the next block's then writes
    its crops into fresh pages, a page fault per page (measured: ~22 faults per 256x192 crop, 14% of the
    data workers' CPU in the kernel; bench/decode_heap.py). Set once per process; elsewhere (not glibc)
    nothing changes.
    """
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    _kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _kept
