"""The storage contract's keys, objects and errors: plain values, no I/O, so a process
that only walks a disk (fswalk's children) imports them without the driver's asyncio.

Keys are '/'-separated relative paths ("docker/registry/v2/blobs/sha256/ab/abcd.../data").
A key is non-empty, relative, with no empty, "." or ".." segment and no NUL or backslash;
drivers reject any other key with StorageError (never StorageNotFound). The empty key ""
names the root, and only ``list`` and ``stat`` accept it.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

# A batch of keys from ``walk`` (an alias: in StorageDriver, ``list`` names the method),
# of objects from ``scan``, ``stat_many``'s answers (None: missing), and which moves of
# ``move_many`` found their source.
Keys = list[str]
Infos = list["FileInfo"]
Stats = list["FileInfo | None"]
Moved = list[bool]
# move_stale_in's answers: each source's (size, mtime) (None: missing, or a directory),
# and whether it moved.
Aside = list[tuple["tuple[int, float] | None", bool]]
Records = list[Any]  # a batch of a local walk's records (see walk_local)
# How ``scan`` treats a directory, given its key relative to the scan's prefix (ending in
# "/"): None, enter it; a relative key, report only the object at that key under it, or
# the directory itself when there is none (""): the directory is not listed.
Fold = Callable[[str], str | None]
# A part of a walk: (index, count), the top-level entries whose name's CRC-32 modulo
# count is index (see in_shard), so that several walks apart share a tree between them.
Shard = tuple[int, int]

# Which object's bytes ``scan_apart`` reads along with an object it found: given the found
# object's key (from the root, not the prefix), a key, or None for none.
Reader = Callable[[str], str | None]


def in_shard(name: str, shard: Shard | None) -> bool:
    """Whether the entry ``name`` is in ``shard`` (None: the whole): a top-level one, for
    the driver's own walks; a local walk may share its work by others."""
    return shard is None or zlib.crc32(name.encode()) % shard[1] == shard[0]


class StorageError(Exception):
    """A storage operation failed for a reason other than a missing key."""


class StorageConflict(StorageError):
    """The object changed (another writer) since the version the caller named."""


class StorageNotFound(StorageError):
    """The key (or prefix) does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"not found: {key}")
        self.key = key


@functools.lru_cache(maxsize=65536)
def check_key(key: str) -> None:
    """StorageError unless ``key`` is a valid non-empty key (see the module docstring).
    Cached: the same keys (tag links, blobs) come back on every request; refusals are not
    cached."""
    if not key or key[0] == "/" or "\x00" in key or "\\" in key:
        raise StorageError(f"invalid key: {key!r}")
    for segment in key.split("/"):
        if not segment or segment == "." or segment == "..":
            raise StorageError(f"invalid key: {key!r}")


def check_names(*names: str) -> None:
    """StorageError unless each of ``names`` is one valid key segment."""
    for name in names:
        if "/" in name:
            raise StorageError(f"invalid name (one key segment): {name!r}")
        check_key(name)


class FileInfo(NamedTuple):
    """A tuple: a collection gets a few hundred thousand (cheaper than a frozen
    dataclass's six attribute sets each)."""

    key: str
    size: int
    mtime: float
    is_dir: bool
    # An identity of the object's content, changed by every write (S3's ETag), or None
    # where the driver has none. Lets a process check that an object is still the one it
    # wrote itself, across processes that replace it whole.
    version: str | None = None
    # With ``scan_apart``'s ``read``: the bytes of the object it named; None if it named
    # none, or that object was missing.
    data: bytes | None = None


class LeaseLost(Exception):
    """Another holder has the lease now (this one released it, or stalled past its time
    limit and it was taken over): the work it guarded must stop."""


def join_key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix and rel else prefix or rel


def below(after: str, directory: str) -> bool:
    """Whether every key under ``directory`` (a relative path ending in "/") sorts at or
    before ``after``, so a walk that starts after ``after`` skips the directory."""
    return after > directory and not after.startswith(directory)
