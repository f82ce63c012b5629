"""The repository catalog: every directory under ``repositories/`` that holds a repository.

A repository is a directory with ``_layers`` (as registry:2 decides) or ``_manifests``
(a cached repository whose blobs were not fetched yet); one holding only an upload
session is not listed. Names sort lexically and pages continue after ``last``.

Walking the tree per request is what makes registry:2's catalog slow (it does). Here the
walk is kept in memory and redone only when the catalog *epoch* changed: a small object
every process rewrites when it creates a repository, so a repository pushed through one
worker is listed at once by every other.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right

from entrepot.registry import layout
from entrepot.registry.epochs import CATALOG, CATALOG_REMOVALS, bump_epoch, read_epoch
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

_MARKERS = frozenset({"_layers", "_manifests"})


async def list_repositories(driver: StorageDriver) -> list[str]:
    found: list[str] = []

    async def walk(prefix: str, name: str) -> None:
        try:
            children = await driver.list(prefix)
        except StorageNotFound:
            return
        if any(child in _MARKERS for child in children):
            found.append(name)
        for child in children:
            if child.startswith("_"):
                continue
            await walk(f"{prefix}/{child}", f"{name}/{child}" if name else child)

    await walk(layout.REPOSITORIES, "")
    found.sort()
    return found


def paginate(items: list[str], n: int | None, last: str | None) -> list[str]:
    """Items after ``last`` (exclusive), at most ``n`` of them. ``items`` is sorted."""
    start = bisect_right(items, last) if last else 0
    return items[start : start + n] if n is not None else items[start:]


class RepositoryIndex:
    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self._names: list[str] | None = None
        self._known: set[str] = set()
        self._epoch: bytes | None = None
        self._lock = asyncio.Lock()
        self._removals: bytes | None = None
        self._removals_checked = float("-inf")

    async def _current_epoch(self) -> bytes | None:
        return await read_epoch(self.driver, CATALOG)

    async def names(self) -> list[str]:
        epoch = await self._current_epoch()
        if self._names is not None and epoch == self._epoch:
            return self._names
        async with self._lock:
            epoch = await self._current_epoch()
            if self._names is None or epoch != self._epoch:
                names = await list_repositories(self.driver)
                self._names, self._known, self._epoch = names, set(names), epoch
            return self._names

    async def note(self, name: str) -> None:
        """Called whenever a repository gains a link: a repository this process has not
        seen yet bumps the epoch (one small write per new repository, none after). After
        garbage collection removed repositories (checked at most once a second), every
        repository counts as unseen again, so one pushed anew is listed again."""
        if name in self._known and time.monotonic() - self._removals_checked < 1.0:
            return
        if name in self._known:
            self._removals_checked = time.monotonic()
            removals = await read_epoch(self.driver, CATALOG_REMOVALS)
            if removals == self._removals:
                return
            self._removals = removals
            self._known.clear()
        self._known.add(name)
        try:
            await bump_epoch(self.driver, CATALOG)
        except StorageError:
            self._known.discard(name)
            raise
