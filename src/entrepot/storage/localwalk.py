"""A walk the caller writes and a driver runs where the objects are (StorageDriver.walk_local):
the caller knows the shape of its tree (which folders hold what), so it lists only the
folders it needs and reads what it will use, and hands back records, not one row per
object. A disk runs it in a thread or a process of its own; object storage cannot (a
listing there is a request, and the flat ``scan`` is cheaper).

A walk sees the store through a LocalView: synchronous, by key, never a path.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from entrepot.storage.fsops import TMP_PREFIX, _get
from entrepot.storage.objects import Shard, in_shard


class LocalView(Protocol):
    """The store as a local walk reads it."""

    def names(self, key: str) -> list[str]:
        """The names under ``key``, objects and folders alike, in no order; [] for a
        missing key or an object."""

    def stat(self, key: str) -> tuple[int, float] | None:
        """The object's size and mtime; None for a missing key or a folder."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes; None for a missing key or a folder."""

    def mtime(self, key: str) -> float | None:
        """When the object, or the folder, was last changed (a folder: an entry added or
        removed); None for a missing key."""

    def mine(self, name: str) -> bool:
        """Whether ``name`` is in the walk's shard (see in_shard): a top-level entry's, or
        whatever the walk shares its work by."""


# A module-level function (the walking process finds it by name): given the view, the
# walk's prefix and its arguments, batches of marshal-able records (plain tuples, lists,
# strings, numbers, bytes, None).
LocalWalk = Callable[[LocalView, str, tuple[str, ...]], Iterator[list[Any]]]


class DiskView:
    """A LocalView of the store whose root is the directory ``base``."""

    def __init__(self, base: str, shard: Shard | None = None) -> None:
        self._base = f"{base}/"
        self._shard = shard

    def names(self, key: str) -> list[str]:
        try:
            found = os.listdir(self._base + key)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [name for name in found if not name.startswith(TMP_PREFIX)]

    def stat(self, key: str) -> tuple[int, float] | None:
        try:
            st = os.stat(self._base + key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if stat_mod.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime)

    def get(self, key: str) -> bytes | None:
        try:
            return _get(self._base + key)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def mtime(self, key: str) -> float | None:
        try:
            return os.stat(self._base + key).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None

    def mine(self, name: str) -> bool:
        return in_shard(name, self._shard)


def walk_disk(
    base: str, prefix: str, walk: LocalWalk, args: tuple[str, ...], shard: Shard | None
) -> Iterator[list[Any]]:
    """``walk``'s batches over the store at ``base``."""
    return walk(DiskView(base, shard), prefix, args)
