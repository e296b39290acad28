"""Handing freed heap memory back to the system between the passes of long work.

glibc's allocator keeps the memory of freed arrays under its mmap threshold (which it raises up to
32 MB as large arrays are freed) in its heaps, and fragmented heaps are not given back: a
98M-weight model's budget search grew 1.3 GB over four quantization passes that each freed
what the last one had allocated (bench/bench_scale.py). ``malloc_trim`` gives the free pages
back; elsewhere (another C library, another system) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_memory() -> bool:
    """Give the allocator's free heap pages back to the system; True where it could (glibc)."""
    fn = _malloc_trim()
    return bool(fn is not None and fn(0) >= 0)
