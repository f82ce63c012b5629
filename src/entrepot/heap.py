"""The C heap of a worker, set for request bodies that come and go in bursts.

An upload's body arrives as pieces of a few hundred KiB (allocated by Granian as Python
bytes with glibc's malloc), several MiB of them alive while they are hashed and written,
all freed when the request ends. With glibc's defaults the heap gives the freed memory
back to the kernel as soon as more than about twice the largest recent piece is free at
its top, so the next request (the next PATCH of a chunked push) faults every page in
again and the kernel zeroes it (~39,000 page faults per 256 MiB pushed in 16 MiB chunks;
CPU per such push 0.72 -> 0.50 s in process, 0.93 -> 0.85 s for the server measured
through HTTP, see the README's Benchmarks). Here pieces up to ``MMAP_ABOVE``
come from the heap, and it keeps up to ``KEEP_FREE`` of free memory for the next body.
That memory stays counted in the worker's RSS once a push used it.

Only where the C library is glibc, and not when the operator set malloc's own knobs
(``MALLOC_*_`` variables or ``GLIBC_TUNABLES``), which win.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["KEEP_FREE", "MMAP_ABOVE", "keep_heap_for_bodies"]

MMAP_ABOVE = 4 << 20  # larger allocations get their own mapping, freed at once
KEEP_FREE = 32 << 20  # about what one upload has alive: 16 MiB waiting, the batch being stored

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_OPERATOR_KNOBS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)


def keep_heap_for_bodies() -> bool:
    """Set this process's malloc as the module says; whether it was set."""
    if any(name in os.environ for name in _OPERATOR_KNOBS):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc's: mallopt's numbers are its own
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The threshold first: setting either one stops glibc from moving both on its own.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE) and mallopt(_M_TRIM_THRESHOLD, KEEP_FREE))
