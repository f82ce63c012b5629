"""Whole reads of small files (links, epochs) for the filesystem driver, checked by one
``stat`` instead of read again: a tag's link is read on every manifest request and a
layer's on every blob request, and open, read and close cost three system calls.

A file's bytes are kept with its (inode, ctime, mtime, size). The kernel sets ctime to
"now" on every change of a file (a write, a truncate, a rename onto its name makes
another inode), so a kept copy whose stat still matches is the file's content: a tag
moved by another worker or replica, or by registry:2 writing the link in place, is seen
on the next read. Only files last changed more than ``SETTLE_NS`` ago are kept, so a
change within the same clock tick as the copy (timestamps are coarse) cannot go unseen.

Used only where stat is trustworthy at once: local filesystems (``stat_is_live``). A
network filesystem may answer stat from its attribute cache for seconds, where opening
the file revalidates it.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time

__all__ = ["SmallFiles", "stat_is_live"]

# Files larger than this are read every time (links are 71 bytes, epochs 32).
MAX_FILE_BYTES = 1024
# Kept files, the oldest kept pushed out: at most about 1.5 MB (bytes, path, stat).
MAX_FILES = 4096
# A file changed more recently than this is read again on each request.
SETTLE_NS = 1_000_000_000

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# Filesystems whose stat reflects every change at once, as the kernel made it.
_LIVE_STAT = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "bcachefs"}
    | {"overlay", "jfs", "reiserfs", "nilfs2"}
)

Stamp = tuple[int, int, int, int]


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)


def read_whole(fd: int) -> bytes:
    """The rest of an open file."""
    data = os.read(fd, 1 << 16)
    if not data:
        return data
    parts = [data]
    while more := os.read(fd, 1 << 20):
        parts.append(more)
    return data if len(parts) == 1 else b"".join(parts)


class SmallFiles:
    """Whole reads with small, settled files kept (see the module's description)."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Stamp, bytes]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def read(self, path: str) -> bytes:
        kept = self._kept.get(path)
        if kept is not None and kept[0] == _stamp(os.stat(path)):
            return kept[1]
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
        try:
            st = os.fstat(fd)  # the stamp of the bytes read, whatever replaces the file
            data = read_whole(fd)
        finally:
            os.close(fd)
        kept_files = self._kept
        if (
            len(data) <= MAX_FILE_BYTES
            and len(data) == st.st_size
            and stat_mod.S_ISREG(st.st_mode)
            and time.time_ns() - st.st_ctime_ns > SETTLE_NS
        ):
            if path not in kept_files and len(kept_files) >= MAX_FILES:
                del kept_files[next(iter(kept_files))]
            kept_files[path] = (_stamp(st), data)
        elif kept is not None:
            del kept_files[path]
        return data


def stat_is_live(path: str, mounts: str = "/proc/self/mounts") -> bool:
    """Whether ``path`` is on a local filesystem (its mount's type in _LIVE_STAT)."""
    target = os.path.realpath(path)
    best, best_type = "", ""
    try:
        with open(mounts, encoding="utf-8") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, best_type = point, fields[2]
    except OSError:
        return False  # not Linux, or no /proc: read every time
    return best_type in _LIVE_STAT
