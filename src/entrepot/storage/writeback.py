"""Writing a file back to disk while it is still being written.

An upload's bytes must be on disk before they become a visible blob (an fsync at commit).
Left to itself, the kernel starts writing dirty pages back only after many seconds or many
megabytes, so that fsync would find the whole upload to write and the client would wait
for the disk after sending its last byte. Instead, after each write the writer asks the
kernel to start writing those pages now (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which
queues the I/O and returns) and waits only for the pages written more than ``LAG`` bytes
earlier: the disk works while the next bytes arrive, dirty memory stays bounded, and the
fsync at commit finds at most ``LAG`` bytes (plus metadata) left. The fsync at commit stays
what makes the bytes durable; this only moves the disk's work earlier.

Where ``sync_file_range`` does not exist (not Linux), the writer calls ``fdatasync`` every
``LAG`` bytes, which waits for the disk in the writing thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

__all__ = ["LAG", "Writeback"]

# Bytes written but not yet known to be on disk, at most (about 40 ms of a fast disk).
LAG = 16 * 1024 * 1024

_WAIT_BEFORE = 1  # SYNC_FILE_RANGE_WAIT_BEFORE
_WRITE = 2  # SYNC_FILE_RANGE_WRITE
_WAIT_AFTER = 4  # SYNC_FILE_RANGE_WAIT_AFTER
# The filesystem or file cannot do it (the fsync at commit still makes the bytes durable).
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.ESPIPE, errno.EOPNOTSUPP)

SyncRange = Callable[[int, int, int, int], int]


def _load_sync_file_range() -> SyncRange | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    sync_range: SyncRange = fn
    return sync_range


_sync_file_range = _load_sync_file_range()


class Writeback:
    """The writeback of one file written sequentially from offset ``start``. Not thread
    safe: one thread at a time calls ``written`` (a writer has one write in flight)."""

    def __init__(self, start: int, lag: int = LAG, ranges: SyncRange | None = None) -> None:
        self.lag = lag
        self._started = start  # writeback asked for up to here
        self._waited = start  # written back up to here
        self._ranges = ranges or _sync_file_range  # None: fdatasync instead

    @property
    def by_range(self) -> bool:
        """Whether the writeback goes by sync_file_range (else fdatasync every lag)."""
        return self._ranges is not None

    def written(self, fd: int, end: int) -> None:
        """The file now holds bytes up to ``end``: start writing back what is new, and
        wait for what is more than ``lag`` behind. Raises OSError on an I/O error, which
        must fail the writer: the kernel reports a writeback error once per open file, so
        the fsync at commit would not see it again."""
        if end - self._waited < self.lag and self._ranges is None:
            return
        if self._ranges is None:
            os.fdatasync(fd)
            self._started = self._waited = end
            return
        if end > self._started:
            self._call(fd, self._started, end - self._started, _WRITE)
            self._started = end
        behind = end - self.lag
        if behind > self._waited and self._ranges is not None:
            flags = _WAIT_BEFORE | _WRITE | _WAIT_AFTER
            self._call(fd, self._waited, behind - self._waited, flags)
            self._waited = behind

    def _call(self, fd: int, offset: int, count: int, flags: int) -> None:
        assert self._ranges is not None
        if self._ranges(fd, offset, count, flags) == 0:
            return
        err = ctypes.get_errno()
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err))
        self._ranges = None  # this file cannot: fdatasync every ``lag`` bytes instead
