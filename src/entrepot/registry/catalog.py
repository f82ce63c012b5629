"""The repository catalog: every directory under ``repositories/`` that holds a repository.

A repository is a directory with ``_layers`` (as registry:2 decides) or ``_manifests``
(a cached repository whose blobs were not fetched yet); one holding only an upload
session is not listed. Names sort lexically and pages continue after ``last``.

Walking the whole tree per request is what makes registry:2's catalog slow. Here:

* the full list is kept in memory, valid while the catalog *epoch* is unchanged (a small
  object every process rewrites when it creates a repository, so a repository pushed
  through one worker is listed at once by every other);
* while no valid list is in memory (after start, or after another worker created a
  repository), a page is read from storage with a lazy walk that stops after the page's
  last name, as registry:2 does for page 1, while one background task rebuilds the list;
* the list is saved as a snapshot keyed by the epoch (outside docker/registry/v2), so a
  restarted process or another worker loads it instead of walking.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from bisect import bisect_right
from collections.abc import AsyncGenerator
from contextlib import aclosing

from entrepot.registry import layout
from entrepot.registry.epochs import CATALOG, CATALOG_REMOVALS, bump_epoch, read_epoch
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.catalog")

SNAPSHOT = "entrepot/catalog/snapshot"
_SNAPSHOT_MAGIC = b"entrepot-catalog-v1"
_NO_EPOCH = b"-"
_MARKERS = ("/_layers/", "/_manifests/")
# Where a name may be cut into a shorter one walked after it (see _Reorder).
_EARLY_SEPARATORS = "-./"


def _repository_of(key: str) -> str | None:
    """The repository a collapsed walk key marks: "lib/app/_layers/" -> "lib/app"."""
    for marker in _MARKERS:
        if key.endswith(marker) and len(key) > len(marker):
            return key[: -len(marker)]
    return None


def _names_found(keys: list[str], previous: str) -> list[str]:
    found = []
    for key in keys:
        name = _repository_of(key)
        if name is not None and name != previous:  # "_layers/" and "_manifests/" both mark
            found.append(name)
            previous = name
    return found


class _Reorder:
    """Releases names in lexical order from a walk in key order. The walk reaches
    "<name>/_layers/", so a name found later that sorts earlier is always a proper prefix
    of an earlier one, cut before "-", "." or "/" (the separators that sort before "/"
    or "_"): "a-b" and "a/0" come before "a". A name waits until every such prefix is
    known not to be a repository, or the walk has passed where its markers would be."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self.pending: list[tuple[str, str]] = []  # a heap of (name, key that settles it)
        self.exists: dict[str, bool] = {}  # prefix -> is a directory (for this walk)

    async def _is_directory(self, prefix: str) -> bool:
        known = self.exists.get(prefix)
        if known is None:
            try:
                info = await self.driver.stat(layout.repository(prefix))
                known = info.is_dir
            except StorageNotFound:
                known = False
            self.exists[prefix] = known
        return known

    async def add(self, name: str, key: str) -> None:
        settles = ""
        for i, char in enumerate(name):
            if char in _EARLY_SEPARATORS and i > 0:  # a stray "-x" has no prefix
                marker = f"{name[:i]}/_manifests/"
                if marker > key and marker > settles and await self._is_directory(name[:i]):
                    settles = marker
        heapq.heappush(self.pending, (name, settles))

    def release(self, key: str | None) -> list[str]:
        """The names settled once the walk is at ``key`` (None: at its end)."""
        out = []
        while self.pending and (key is None or self.pending[0][1] <= key):
            out.append(heapq.heappop(self.pending)[0])
        return out


async def walk_repositories(
    driver: StorageDriver, after: str | None = None
) -> AsyncGenerator[str, None]:
    """Repository names after ``after`` in lexical order, read lazily from storage."""
    order = _Reorder(driver)
    previous = ""
    walk = driver.walk(layout.REPOSITORIES, after=after or "", collapse="_")
    async with aclosing(walk) as batches:
        async for batch in batches:
            for key in batch:
                name = _repository_of(key)
                if name is not None and name != previous:
                    previous = name
                    if after is None or name > after:
                        await order.add(name, key)
                for settled in order.release(key):
                    yield settled
    for settled in order.release(None):
        yield settled


async def list_repositories(driver: StorageDriver) -> list[str]:
    """Every repository name, sorted (one walk of the whole tree)."""
    names: list[str] = []
    async with aclosing(driver.walk(layout.REPOSITORIES, collapse="_")) as batches:
        async for batch in batches:
            names += _names_found(batch, names[-1] if names else "")
    names.sort()
    return names


async def read_page(driver: StorageDriver, n: int, last: str | None) -> list[str]:
    """At most ``n`` names after ``last``, walking only as far as they go."""
    page: list[str] = []
    if n <= 0:
        return page
    async with aclosing(walk_repositories(driver, last)) as names:
        async for name in names:
            page.append(name)
            if len(page) >= n:
                break
    return page


def paginate(items: list[str], n: int | None, last: str | None) -> list[str]:
    """Items after ``last`` (exclusive), at most ``n`` of them. ``items`` is sorted."""
    start = bisect_right(items, last) if last else 0
    return items[start : start + n] if n is not None else items[start:]


async def load_snapshot(driver: StorageDriver, epoch: bytes | None) -> list[str] | None:
    """The names saved for ``epoch``, or None when the snapshot is missing, unreadable
    or of another epoch."""
    try:
        data = await driver.get_content(SNAPSHOT)
    except StorageError:
        return None
    head, _, body = data.partition(b"\n\n")
    if head != _SNAPSHOT_MAGIC + b"\n" + (epoch or _NO_EPOCH):
        return None
    return body.decode().split("\n") if body else []


async def save_snapshot(driver: StorageDriver, epoch: bytes | None, names: list[str]) -> None:
    head = _SNAPSHOT_MAGIC + b"\n" + (epoch or _NO_EPOCH)
    try:
        await driver.put_content(SNAPSHOT, head + b"\n\n" + "\n".join(names).encode())
    except StorageError as exc:  # only a later start-up is slower; the walk's list stands
        log.warning("could not save the catalog snapshot: %s", exc)


def _log_failure(task: asyncio.Task[list[str]]) -> None:
    # Requests serve pages from storage meanwhile; the next one starts another build.
    if not task.cancelled() and task.exception() is not None:
        log.error("catalog rebuild failed: %s", task.exception())


class RepositoryIndex:
    """The catalog of one process. ``page`` and ``names`` always reflect every repository
    created before the call began, through any process sharing the storage."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self._names: list[str] | None = None
        self._known: set[str] = set()
        self._epoch: bytes | None = None
        self._generation = 0  # of the build that made _names
        self._started = 0  # builds started
        self._build: tuple[bytes | None, asyncio.Task[list[str]]] | None = None
        self._removals: bytes | None = None
        self._removals_checked = float("-inf")

    async def _current_epoch(self) -> bytes | None:
        return await read_epoch(self.driver, CATALOG)

    def _fresh(self, epoch: bytes | None) -> list[str] | None:
        return self._names if self._names is not None and epoch == self._epoch else None

    def _rebuild(self, epoch: bytes | None) -> asyncio.Task[list[str]]:
        """The build for ``epoch`` (read before it starts walking): the running one if it
        began at the same epoch, else a new one."""
        if self._build is not None and self._build[0] == epoch and not self._build[1].done():
            return self._build[1]
        self._started += 1
        task = asyncio.create_task(self._load(epoch, self._started))
        task.add_done_callback(_log_failure)
        self._build = (epoch, task)
        return task

    async def _load(self, epoch: bytes | None, generation: int) -> list[str]:
        names = await load_snapshot(self.driver, epoch)
        if names is None:
            names = await list_repositories(self.driver)
            await save_snapshot(self.driver, epoch, names)
        if generation > self._generation:  # a build started later may have ended first
            self._names, self._known, self._epoch = names, set(names), epoch
            self._generation = generation
        return names

    async def names(self) -> list[str]:
        epoch = await self._current_epoch()
        fresh = self._fresh(epoch)
        if fresh is not None:
            return fresh
        # Shielded: a cancelled request must not cancel the build others wait for.
        return await asyncio.shield(self._rebuild(epoch))

    async def page(self, n: int | None, last: str | None) -> list[str]:
        """At most ``n`` names after ``last`` (all of them when ``n`` is None)."""
        epoch = await self._current_epoch()
        fresh = self._fresh(epoch)
        if fresh is not None:
            return paginate(fresh, n, last)
        if n is None:
            return paginate(await asyncio.shield(self._rebuild(epoch)), n, last)
        page = await read_page(self.driver, n, last)
        # Built after the page, not meanwhile: the two walks would share the CPU.
        self._rebuild(epoch)
        return page

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

    async def close(self) -> None:
        """Stop a background build (at shutdown)."""
        if self._build is not None and not self._build[1].done():
            self._build[1].cancel()
            await asyncio.gather(self._build[1], return_exceptions=True)
